"""Train / valid / test datasets of an SFT run (``--dllm-objective sft``; ``build_datasets`` calls it).

``--data-path P_sft`` names the prefix ``tools/preprocess_data.py --format sft --output-prefix P``
wrote (``P_sft_tokens`` and ``P_sft_lossmask``); ``--split`` cuts its conversations as Megatron cuts
documents (``sft_dataset.split_document_ranges``) and each split is an ``SFTDataset`` over its range,
repeated in seeded epochs up to the samples it must give. ``--mock-data`` gives ``MockSFTDataset``s
(a seed per split).
"""

from __future__ import annotations

from typing import Optional, Tuple

from megatron_dllm.data.config import DataConfig
from megatron_dllm.data.errors import DataError
from megatron_dllm.data.index_file import check_token_ids, inspect_indexed_dataset
from megatron_dllm.data.preprocess import MASK_SUFFIXES
from megatron_dllm.data.sft_dataset import SFTDataset, split_document_ranges
from megatron_dllm.data.sft_mock import MockSFTDataset


def sft_prefix(cfg: DataConfig) -> str:
    """The one ``--data-path`` prefix of an SFT run; DataError for a blend or a companion's name."""
    from megatron_dllm.data.datasets import parse_data_path

    prefixes, _ = parse_data_path(cfg.data_path)
    if len(prefixes) != 1:
        raise DataError(f"--dllm-objective sft reads one --data-path prefix, got {len(prefixes)}: "
                        f"preprocess the JSONL files together (tools/preprocess_data.py --format sft)")
    prefix = prefixes[0]
    for suffix in MASK_SUFFIXES:
        if prefix.endswith(suffix):
            raise DataError(f"--data-path {prefix} names one of the two SFT files: pass the prefix "
                            f"{prefix[:-len(suffix)]} (without {suffix})")
    return prefix


def build_sft_datasets(cfg: DataConfig, *, seq_length: int, num_samples: Tuple[int, int, int], seed: int,
                       eod_id: int, block_size: int, vocab_size: Optional[int] = None,
                       mask_token_id: Optional[int] = None, token_vocab_size: Optional[int] = None):
    """(train, valid, test) SFT datasets, None where a split has weight 0 or needs no samples.

    Raises:
        DataError: a missing or mismatched ``_tokens`` / ``_lossmask`` pair (naming the preprocess
            command), a blend, a token id outside the vocabulary.
    """
    from megatron_dllm.data.datasets import parse_split

    split = parse_split(cfg.split)
    if cfg.mock_data:
        vocab = int(vocab_size) if vocab_size is not None else (int(eod_id) if eod_id > 2 else 256)
        excluded = () if mask_token_id is None else (int(mask_token_id),)
        return tuple(MockSFTDataset(seq_length, eod_id, block_size=block_size, seed=seed + k, vocab_size=vocab,
                                    excluded_ids=excluded, num_samples=count) if weight > 0 and count > 0 else None
                     for k, (weight, count) in enumerate(zip(split, num_samples)))
    prefix = sft_prefix(cfg)
    ranges = split_document_ranges(prefix, cfg.split, "sft")  # checks both files first
    if token_vocab_size is not None:
        check_token_ids(inspect_indexed_dataset(prefix + MASK_SUFFIXES[0]), int(token_vocab_size))
    return tuple(SFTDataset(prefix, seq_length, eod_id, block_size=block_size, seed=seed, num_samples=count,
                            document_range=span) if span is not None and count > 0 else None
                 for span, count in zip(ranges, num_samples))
