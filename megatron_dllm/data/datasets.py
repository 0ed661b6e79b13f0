"""Train / valid / test datasets of clean token windows over Megatron-Core's dataset machinery.

    train, valid, test = build_datasets(cfg, seq_length=L, num_samples=(n_train, n_valid, n_test),
                                        seed=1234, eod_id=tok.eod_id)
    sample = train[i]  # {"tokens": LongTensor[L], "loss_mask": BoolTensor[L], "document_ids": LongTensor[L]}

Documents (``.bin`` / ``.idx`` from tools/preprocess_data.py) are shuffled, concatenated and cut
into windows of exactly L tokens by ``megatron.core.datasets`` (``GPTDataset`` with
``add_extra_token_to_sequence=False``, blended over prefixes by ``BlendedMegatronDatasetBuilder``,
index caches built on rank 0 first, then read by the other ranks after a barrier). Unlike
``GPTDataset`` (next-token ``labels``), a sample here is the clean sequence x0 itself: masked
diffusion predicts the clean token at the same position.

``document_ids`` numbers the documents inside a window from 0, incrementing after each EOD (an EOD
belongs to the document it ends); padded positions (only in a last partial validation window,
which Megatron drops by default) get an id of their own and ``loss_mask`` False.

This module is the adapter to megatron-core 0.16.1's dataset API: every call into it is here.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy
import torch

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from megatron_dllm.data.config import DataConfig
from megatron_dllm.data.errors import DataError
from megatron_dllm.data.index_file import (IndexedDatasetInfo, check_token_ids,  # noqa: F401
                                           inspect_indexed_dataset)

SPLIT_NAMES = ("train", "valid", "test")
SAMPLE_KEYS = ("tokens", "loss_mask", "document_ids")
_PAD = -1  # fills padded positions inside GPTDataset; never a token id

# --- parsing and validation (no compute, no Megatron state) -------------------------------------


def parse_split(split: str) -> List[float]:
    """'969,30,1' -> [969.0, 30.0, 1.0]: exactly three non-negative numbers, not all zero."""
    parts = [p.strip() for p in str(split).split(",")]
    hint = "use --split TRAIN,VALID,TEST with three non-negative numbers, e.g. 969,30,1"
    if len(parts) != 3:
        raise DataError(f"--split {split!r} has {len(parts)} part(s): {hint}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise DataError(f"--split {split!r} is not three numbers: {hint}") from None
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise DataError(f"--split {split!r} must be non-negative and not all zero: {hint}")
    return values


def parse_data_path(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """Megatron-LM ``--data-path`` syntax -> (prefixes, weights or None).

    ``[prefix]``; ``[w1, prefix1, w2, prefix2, ...]`` (weighted blend); or a list of prefixes
    without weights (blended in proportion to their sizes, as Megatron-LM does).
    """
    if isinstance(data_path, str):
        data_path = [data_path]
    items = [str(p).strip() for p in data_path]
    if not items or not all(items):
        raise DataError("no data given: pass --data-path PREFIX (written by "
                        "tools/preprocess_data.py) or W1 PREFIX1 W2 PREFIX2 ..., or --mock-data")

    def number(text):
        try:
            value = float(text)
        except ValueError:
            return None
        return value

    if len(items) % 2 == 0:
        weights = [number(w) for w in items[0::2]]
        if all(w is None for w in weights):
            return items, None
        bad = [items[2 * i] for i, w in enumerate(weights) if w is None]
        if bad:
            raise DataError(f"--data-path weight {bad[0]!r} is not a number: use "
                            f"--data-path W1 PREFIX1 W2 PREFIX2 ... (weights are numbers)")
        for w in weights:
            if not math.isfinite(w) or w <= 0:
                raise DataError(f"--data-path weight {w} must be a positive number "
                                f"(drop a prefix instead of giving it weight 0)")
        prefixes = items[1::2]
        if len(prefixes) == 1:
            return prefixes, None
        return prefixes, weights
    return items, None


def _split_bounds(split: Sequence[float], num_elements: int) -> List[Optional[Tuple[int, int]]]:
    """[begin, end) element ranges of each split, computed exactly as Megatron's builder does."""
    total = sum(split)
    matrix = convert_split_vector_to_split_matrix([s / total for s in split])
    bounds = []
    for bookend in matrix:
        if bookend is None:
            bounds.append(None)
        else:
            bounds.append((int(round(bookend[0] * float(num_elements))),
                           int(round(bookend[1] * float(num_elements)))))
    return bounds


def _check_num_samples(num_samples) -> Tuple[int, int, int]:
    values = tuple(num_samples)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, numpy.integer))
                               or v < 0 for v in values):
        raise DataError(f"num_samples must be three integers >= 0 (train, valid, test), "
                        f"got {num_samples!r}")
    return tuple(int(v) for v in values)


def validate_data_config(cfg: DataConfig, num_samples: Optional[Sequence[int]] = None,
                         token_vocab_size: Optional[int] = None
                         ) -> Tuple[List[str], Optional[List[float]], List[float]]:
    """Every check that needs no compute; returns (prefixes, weights or None, split weights).

    Checks the split string, the data-path syntax and weights, that each prefix has a readable
    and consistent ``.bin`` / ``.idx`` pair, when ``token_vocab_size`` is given that every token
    id in each ``.bin`` is below it (one pass over the file), and, when ``num_samples`` is given,
    that every split asked for samples gets at least one document of each prefix.

    Raises:
        DataError naming the file or flag and the fix.
    """
    split = parse_split(cfg.split)
    if cfg.mock_data:
        return [], None, split
    prefixes, weights = parse_data_path(cfg.data_path)
    counts = _check_num_samples(num_samples) if num_samples is not None else None
    for prefix in prefixes:
        info = inspect_indexed_dataset(prefix)
        if info.num_sequences == 0:
            raise DataError(f"dataset {prefix} holds no documents: rewrite it with "
                            f"tools/preprocess_data.py from a non-empty corpus")
        if token_vocab_size is not None:
            check_token_ids(info, int(token_vocab_size))
        if counts is None:
            continue
        for name, bounds, wanted in zip(SPLIT_NAMES, _split_bounds(split, info.num_sequences),
                                        counts):
            if bounds is not None and wanted > 0 and bounds[1] <= bounds[0]:
                raise DataError(
                    f"--split {cfg.split} gives the {name} split none of the "
                    f"{info.num_sequences} documents of {prefix}: raise its weight, use more "
                    f"documents, or give the {name} split weight 0")
    return prefixes, weights, split


# --- Megatron-Core adapter ----------------------------------------------------------------------


class _TokenizerInfo:
    """The few tokenizer facts GPTDatasetConfig reads (``eod``, ``pad``, ``vocab_size``) and the
    ``unique_identifiers`` Megatron hashes into its cache names."""

    def __init__(self, eod_id: int, vocab_size: Optional[int]) -> None:
        self.eod = int(eod_id)
        self.pad = _PAD
        self.vocab_size = vocab_size
        self.unique_identifiers = OrderedDict(
            [("class", "megatron_dllm.TokenizerInfo"), ("eod", self.eod)])

    def __repr__(self) -> str:
        return f"TokenizerInfo(eod={self.eod}, vocab_size={self.vocab_size})"


@dataclass
class DllmGPTDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus what the mock documents need."""

    mock_vocab_size: int = 256
    """Mock document tokens are drawn from [0, mock_vocab_size) minus mock_excluded_ids."""

    mock_excluded_ids: Tuple[int, ...] = ()
    """Ids never drawn as mock content (EOD, the mask token)."""


class DllmGPTDataset(GPTDataset):
    """GPTDataset whose items are same-position samples (no next-token labels).

    ``dataset[i]`` -> ``tokens`` LongTensor[L] (clean x0), ``loss_mask`` BoolTensor[L] (False only
    at padding), ``document_ids`` LongTensor[L].
    """

    @staticmethod
    def _key_config_attributes() -> List[str]:
        # 0.16.1 leaves add_extra_token_to_sequence out of the cache key, so a GPTDataset cache of
        # an AR run (L + 1 tokens per sample) would be reused for L-token samples: add it.
        return GPTDataset._key_config_attributes() + ["add_extra_token_to_sequence"]

    def __getitem__(self, idx):
        text, _ = self._query_document_sample_shuffle_indices(int(idx))
        text = torch.from_numpy(numpy.asarray(text, dtype=numpy.int64))
        sample = same_position_sample(text, self.config.tokenizer.eod, self._pad_token_id)
        if self.config.eod_mask_loss:  # --eod-mask-loss: an end-of-document token carries no loss
            sample["loss_mask"] &= sample["tokens"] != self.config.tokenizer.eod
        return sample


def same_position_sample(text: torch.Tensor, eod_id: int, pad_value: int = _PAD) -> dict:
    """One sample dict from a window ``text`` [L] (long) whose padded positions hold ``pad_value``.

    Padded positions become ``eod_id`` in ``tokens``, False in ``loss_mask`` and one document id
    past the last real document in ``document_ids``.
    """
    pad = text == pad_value
    is_eod = (text == eod_id).to(torch.long)
    document_ids = torch.cumsum(is_eod, dim=0) - is_eod
    tokens = text.clone()
    if bool(pad.any()):
        real = ~pad
        document_ids[pad] = (int(document_ids[real].max()) + 1) if bool(real.any()) else 0
        tokens[pad] = eod_id
    return {"tokens": tokens, "loss_mask": ~pad, "document_ids": document_ids}


class MockDocuments:
    """Deterministic synthetic documents with structure a model can learn (low-level dataset).

    Document i has ``sequence_lengths[i]`` tokens (the last is EOD), lengths uniform in
    [4, 2L]; its content is drawn with a generator seeded by (seed, i) from one of three patterns
    over the allowed ids: an arithmetic progression (counting with step 1-3, modulo the number of
    allowed ids), a repeated n-gram (n in 2..8), or a random first half copied once; n-gram and
    copied tokens follow Zipf-like frequencies (p ~ 1 / rank), as words in text do.
    """

    NUM_DOCUMENTS = 100_000

    def __init__(self, seed: int, seq_length: int, vocab_size: int, excluded_ids: Sequence[int],
                 eod_id: int) -> None:
        excluded = set(int(i) for i in excluded_ids) | {int(eod_id)}
        self.content_ids = numpy.array([i for i in range(vocab_size) if i not in excluded],
                                       dtype=numpy.int64)
        if len(self.content_ids) < 2:
            raise DataError(f"mock data needs at least 2 token ids besides EOD and mask, "
                            f"vocabulary size {vocab_size} leaves {len(self.content_ids)}")
        self.seed = int(seed) % (2 ** 63)
        self.eod_id = int(eod_id)
        rng = numpy.random.default_rng([self.seed, 0x6D6F636B])
        # Zipf-like frequencies (p ~ 1 / rank) for the n-gram and copy patterns, as in text.
        ranks = numpy.arange(1, len(self.content_ids) + 1, dtype=numpy.float64)
        self.zipf = (1.0 / ranks) / (1.0 / ranks).sum()
        self.sequence_lengths = rng.integers(
            4, max(8, 2 * seq_length) + 1, size=self.NUM_DOCUMENTS).astype(numpy.int32)

    def __len__(self) -> int:
        return self.NUM_DOCUMENTS

    def document(self, idx: int) -> numpy.ndarray:
        """All tokens of document ``idx`` [n] (int64), ending with EOD."""
        n = int(self.sequence_lengths[idx])
        m = n - 1
        k = len(self.content_ids)
        rng = numpy.random.default_rng([self.seed, int(idx)])
        pattern = int(rng.integers(3))
        j = numpy.arange(m)
        if pattern == 0:
            v = (int(rng.integers(k)) + int(rng.integers(1, 4)) * j) % k
        elif pattern == 1:
            gram = rng.choice(k, size=int(rng.integers(2, 9)), p=self.zipf)
            v = gram[j % len(gram)]
        else:
            half = rng.choice(k, size=(m + 1) // 2, p=self.zipf)
            v = numpy.concatenate([half, half])[:m]
        return numpy.concatenate([self.content_ids[v], [self.eod_id]]).astype(numpy.int64)

    def get(self, idx: int, offset: int = 0, length: Optional[int] = None) -> numpy.ndarray:
        """Tokens ``[offset, offset + length)`` of document ``idx`` (IndexedDataset.get's contract)."""
        doc = self.document(idx)
        end = len(doc) if length is None else offset + int(length)
        return doc[offset:end]


class DllmMockGPTDataset(DllmGPTDataset):
    """DllmGPTDataset over MockDocuments (built by Megatron's builder when there is no blend)."""

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: MockDocuments) -> int:
        return len(low_level_dataset)

    @staticmethod
    def build_low_level_dataset(dataset_path, config: DllmGPTDatasetConfig) -> MockDocuments:
        return MockDocuments(config.random_seed, config.sequence_length, config.mock_vocab_size,
                             config.mock_excluded_ids, config.tokenizer.eod)


class SamePositionDataset(torch.utils.data.Dataset):
    """The dataset ``build_datasets`` returns: ``dataset[i]`` is exactly the dict of SAMPLE_KEYS.

    Attributes:
        inner: the Megatron dataset (DllmGPTDataset or BlendedDataset of them).
        seq_length: L.
        eod_id: the end-of-document id.
    """

    def __init__(self, inner, seq_length: int, eod_id: int) -> None:
        self.inner = inner
        self.seq_length = seq_length
        self.eod_id = eod_id

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, idx: int) -> dict:
        """``tokens`` LongTensor[L], ``loss_mask`` BoolTensor[L], ``document_ids`` LongTensor[L]."""
        if not 0 <= int(idx) < len(self.inner):
            raise IndexError(f"sample {idx} is outside [0, {len(self.inner)})")
        item = self.inner[int(idx)]
        return {key: item[key] for key in SAMPLE_KEYS}


def _default_mock_vocab(eod_id: int) -> int:
    return int(eod_id) if eod_id > 2 else 256


def _every_rank() -> bool:
    return True


def build_datasets(
    cfg: DataConfig,
    *,
    seq_length: int,
    num_samples: Tuple[int, int, int],
    seed: int,
    eod_id: int,
    vocab_size: Optional[int] = None,
    mask_token_id: Optional[int] = None,
    token_vocab_size: Optional[int] = None,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
    chat_format: Optional[str] = None,
    block_size: int = 32,
) -> Tuple[Optional[SamePositionDataset], Optional[SamePositionDataset], Optional[SamePositionDataset]]:
    """Build the train, valid and test datasets (None where the split weight or its sample count is 0).

    Collective: call on every rank of the default process group (torch.distributed must be
    initialised, also with one rank). Rank 0 builds and caches the index files first, the other
    ranks read them after a barrier; so ``cfg.data_cache_path`` (or the data directory) must be on
    a filesystem all ranks see.

    Args:
        cfg: data_path / split / mock_data / data_cache_path / mmap_bin_files / surplus.
        seq_length: L, tokens per sample.
        num_samples: at least this many samples per split (train, valid, test); a dataset may be
            longer (whole epochs). Index with ``global_sample % len(dataset)``.
        seed: seeds the document and sample shuffles (and the mock documents).
        eod_id: end-of-document id (the tokenizer's ``eod_id``).
        vocab_size: mock data only: content ids are drawn below it. Default: below ``eod_id`` when
            ``eod_id > 2`` (mock runs put EOD and [MASK] at the top of the vocabulary), else
            below 256.
        mask_token_id: mock data only: never drawn as content.
        token_vocab_size: real data: every token id in the ``.bin`` files must be below it (the
            tokenizer's vocabulary size); checked once here, a pass over each file.
        is_built_on_rank: Megatron's hook; default every rank builds (each DP rank reads its own
            samples). Ranks where it returns False get None.
        chat_format: "sft": ``cfg.data_path`` is a ``--format sft`` prefix and the datasets are
            ``SFTDataset``s (``MockSFTDataset``s with mock data) whose conversations are padded to a
            multiple of ``block_size`` (``data/sft_splits.py``; no collective, no Megatron index).
            "dpo": a ``--format dpo`` prefix read as preference pairs (``data/dpo_batches.py``).

    Returns:
        (train, valid, test): SamePositionDataset or None each.

    Raises:
        DataError: bad split / data path / weights, a missing or corrupt ``.bin``/``.idx`` (named),
            a token id outside the vocabulary, a split that gets no documents; before any
            index is built.
    """
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 2:
        raise DataError(f"--seq-length must be an integer >= 2, got {seq_length!r}")
    counts = _check_num_samples(num_samples)
    if chat_format == "sft":
        from megatron_dllm.data.sft_splits import build_sft_datasets

        return build_sft_datasets(cfg, seq_length=seq_length, num_samples=counts, seed=seed, eod_id=eod_id,
                                  block_size=block_size, vocab_size=vocab_size, mask_token_id=mask_token_id,
                                  token_vocab_size=token_vocab_size)
    if chat_format == "dpo":  # preference pairs (data/dpo_batches.py)
        from megatron_dllm.data.dpo_batches import build_pair_datasets

        return build_pair_datasets(cfg, seq_length=seq_length, num_samples=counts, seed=seed, eod_id=eod_id,
                                   mask_token_id=mask_token_id, vocab_size=vocab_size, block_size=block_size)
    if chat_format is not None:
        raise DataError(f"build_datasets: chat_format {chat_format!r} is not a dataset format (sft, dpo)")
    prefixes, weights, split = validate_data_config(cfg, counts, token_vocab_size)
    if not torch.distributed.is_initialized():
        raise DataError(
            "build_datasets needs torch.distributed initialised (also with one rank): call "
            "megatron_dllm.platform.distributed.init_process_group first, on every rank")

    tokenizer = _TokenizerInfo(eod_id, vocab_size)
    common = dict(
        random_seed=int(seed),
        sequence_length=seq_length,
        split=",".join(repr(s) for s in split),
        mmap_bin_files=cfg.mmap_bin_files,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=cfg.eod_mask_loss,
        create_attention_mask=False,
        add_extra_token_to_sequence=False,
        mid_level_dataset_surplus=cfg.mid_level_dataset_surplus,
    )
    if cfg.mock_data:
        config = DllmGPTDatasetConfig(
            blend=None, path_to_cache=None,
            mock_vocab_size=int(vocab_size) if vocab_size is not None else _default_mock_vocab(eod_id),
            mock_excluded_ids=tuple(int(i) for i in (mask_token_id,) if i is not None),
            **common)
        cls = DllmMockGPTDataset
    else:
        config = DllmGPTDatasetConfig(
            blend=(prefixes, weights), path_to_cache=cfg.data_cache_path, **common)
        cls = DllmGPTDataset
    # Our split, with splits that need no samples switched off (a mock config gets '1,1,1' from
    # Megatron otherwise). Splits keep their document ranges: switching one off moves nothing.
    total = sum(split)
    matrix = convert_split_vector_to_split_matrix([s / total for s in split])
    config.split_matrix = [bookend if n > 0 else None for bookend, n in zip(matrix, counts)]

    config.split = common["split"]
    builder = BlendedMegatronDatasetBuilder(
        cls, list(counts), is_built_on_rank or _every_rank, config)
    gpt_logger = logging.getLogger(GPTDataset.__module__)
    level = gpt_logger.level
    if cfg.mock_data:  # mock indices are not cached, by design: silence "Unable to save" warnings
        gpt_logger.setLevel(logging.ERROR)
    try:
        built = builder.build()
    finally:
        gpt_logger.setLevel(level)
    return tuple(None if ds is None else SamePositionDataset(ds, seq_length, int(eod_id))
                 for ds in built)
