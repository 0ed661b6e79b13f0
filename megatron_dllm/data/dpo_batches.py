"""Preference-pair data of a DPO run (``--dllm-objective dpo``) and how a micro-batch of pairs is stacked.

    train, valid, test = build_pair_datasets(cfg, seq_length=L, num_samples=(n, 0, 0), seed=1234,
                                             eod_id=tok.eod_id)
    train[i]   # {"chosen": {tokens, loss_mask, document_ids}, "rejected": {...}}, each [L]

``--data-path P_dpo`` (one prefix, written by ``tools/preprocess_data.py --format dpo``) is read by
``sft_dataset.DPOPairDataset``, cut into splits as ``--split`` cuts documents; ``--mock-data`` gives
``MockPairs``. Both are wrapped in ``PairDataset``, whose ``collate`` stacks the chosen and the
rejected side of a micro-batch separately (``data/microbatches.py`` uses a dataset's own ``collate``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import torch

from megatron_dllm.data.batch import collate
from megatron_dllm.data.config import DataConfig
from megatron_dllm.data.errors import DataError

SIDES = ("chosen", "rejected")


class PairDataset(torch.utils.data.Dataset):
    """Preference pairs as the training loop reads them: ``inner[i]`` plus ``collate``."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, idx: int) -> dict:
        return self.inner[idx]

    @staticmethod
    def collate(samples: List[dict], sample_indices: Sequence[int]) -> Dict[str, object]:
        """``{"chosen": collate(chosen sides), "rejected": ..., "sample_index": [P]}``: the sides of P
        pairs stacked as ``batch.collate`` does, ``sample_index`` the global pair index (the noise seed)."""
        out = {side: collate([s[side] for s in samples], sample_indices) for side in SIDES}
        out["sample_index"] = out["chosen"]["sample_index"]
        return out


class MockPairs(torch.utils.data.Dataset):
    """Synthetic pairs for ``--mock-data``: a random prompt, a random reply closed by EOD (chosen), and
    the same reply with one token changed (rejected), each in its own window of L tokens.

    The prompt carries no loss; the reply, its EOD and the EOS padding to a multiple of
    ``pad_multiple`` do; the rest of the window is EOS without loss, a document of its own. Pair i
    depends only on (seed, i).
    """

    def __init__(self, num_pairs: int, seq_length: int, eod_id: int, seed: int, content_vocab: int,
                 pad_multiple: int = 32) -> None:
        if seq_length < 4:
            raise DataError(f"--seq-length {seq_length} is too short for mock preference pairs: use >= 4")
        self.num_pairs, self.seq_length, self.eod_id = int(num_pairs), int(seq_length), int(eod_id)
        self.seed, self.content_vocab = int(seed), int(content_vocab)
        self.pad_multiple = max(1, min(int(pad_multiple), self.seq_length // 2))

    def __len__(self) -> int:
        return self.num_pairs

    def _side(self, prompt: numpy.ndarray, reply: numpy.ndarray) -> dict:
        L = self.seq_length
        reply = numpy.concatenate([reply, [self.eod_id]])
        padded = -(-len(reply) // self.pad_multiple) * self.pad_multiple
        tokens = numpy.full(L, self.eod_id, dtype=numpy.int64)
        loss = numpy.zeros(L, dtype=bool)
        docs = numpy.ones(L, dtype=numpy.int64)
        end = min(L, len(prompt) + padded)
        tokens[:len(prompt)] = prompt
        tokens[len(prompt):len(prompt) + len(reply)] = reply[:L - len(prompt)]
        loss[len(prompt):end] = True
        docs[:end] = 0
        return {"tokens": torch.from_numpy(tokens), "loss_mask": torch.from_numpy(loss),
                "document_ids": torch.from_numpy(docs)}

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= int(idx) < self.num_pairs:
            raise IndexError(f"pair {idx} is outside [0, {self.num_pairs})")
        rng = numpy.random.default_rng([self.seed, int(idx)])
        L = self.seq_length
        prompt_len = int(rng.integers(1, L // 2))
        reply_len = int(rng.integers(1, max(2, (L - prompt_len) // 2)))
        prompt = rng.integers(0, self.content_vocab, prompt_len)
        chosen = rng.integers(0, self.content_vocab, reply_len)
        rejected = chosen.copy()
        k = int(rng.integers(0, reply_len))
        rejected[k] = (rejected[k] + 1 + int(rng.integers(0, self.content_vocab - 1))) % self.content_vocab
        return {"chosen": self._side(prompt, chosen), "rejected": self._side(prompt, rejected)}


def _one_prefix(data_path) -> str:
    from megatron_dllm.data.datasets import parse_data_path

    prefixes, _ = parse_data_path(data_path)
    if len(prefixes) != 1:
        raise DataError(f"--dllm-objective dpo reads one --data-path prefix (P_dpo of tools/preprocess_data.py "
                        f"--format dpo), got {len(prefixes)}: write the pairs into one dataset")
    return prefixes[0]


def build_pair_datasets(cfg: DataConfig, *, seq_length: int, num_samples: Tuple[int, int, int], seed: int,
                        eod_id: int, mask_token_id: Optional[int] = None, vocab_size: Optional[int] = None,
                        block_size: int = 32) -> Tuple[Optional[PairDataset], ...]:
    """(train, valid, test) PairDatasets of the run (None where a split needs no samples); each reply
    is padded with supervised EOS to a multiple of ``block_size`` (as SFT pads).

    Mock data: content ids below ``vocab_size`` (default: below EOD when EOD > 2, as the pretraining
    mock data), never ``mask_token_id``. Real data: ``DPOPairDataset`` over the ``--split`` ranges,
    each split repeated in seeded epochs to its sample count.
    """
    out: List[Optional[PairDataset]] = []
    if cfg.mock_data:
        content = int(vocab_size) if vocab_size is not None else (int(eod_id) if eod_id > 2 else 256)
        if mask_token_id is not None and mask_token_id < content:
            content = int(mask_token_id)
        for split, n in enumerate(num_samples):
            out.append(PairDataset(MockPairs(n, seq_length, eod_id, seed + split, content,
                                                  block_size)) if n else None)
        return tuple(out)
    from megatron_dllm.data.sft_dataset import DPOPairDataset, split_document_ranges

    prefix = _one_prefix(cfg.data_path)
    ranges = split_document_ranges(prefix, cfg.split, format="dpo")
    for split, (n, document_range) in enumerate(zip(num_samples, ranges)):
        if not n or document_range is None:
            out.append(None)
            continue
        out.append(PairDataset(DPOPairDataset(prefix, seq_length, eod_id, block_size=block_size, seed=seed,
                                              num_samples=n, document_range=document_range)))
    return tuple(out)
