"""Synthetic SFT conversations (``--mock-data`` with ``--dllm-objective sft``): tests need no files.

Sample i of ``MockSFTDataset`` is a window of L tokens packed with whole conversations drawn from a
generator seeded by (seed, i): a prompt of 2-12 content tokens (no loss), then the reply, the prompt
reversed (a task a model can learn), and EOD (loss), padded with supervised EOS to a multiple of
the block size (``sft_packing``). Conversations are added while they fit; the rest of the window
is EOS without loss, a document of its own. The keys are those ``SFTDataset`` returns.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy
import torch

from megatron_dllm.data.errors import DataError
from megatron_dllm.data.sft_packing import pad_to_block_multiple, packed_sample

NUM_SAMPLES = 100_000


class MockSFTDataset(torch.utils.data.Dataset):
    """Deterministic synthetic SFT windows (see the module docstring).

    Args:
        seq_length: L, a multiple of ``block_size``.
        eod_id: the EOD / EOS id.
        block_size: the SFT block size (padding unit).
        seed: seeds every sample (with its index).
        vocab_size: content ids are drawn below it, leaving out ``excluded_ids`` and EOD.
        excluded_ids: never drawn (the mask token).
        num_samples: the dataset's length (default 100,000).
    """

    def __init__(self, seq_length: int, eod_id: int, *, block_size: int, seed: int, vocab_size: int,
                 excluded_ids: Sequence[int] = (), num_samples: Optional[int] = None) -> None:
        if block_size < 1 or seq_length % block_size:
            raise DataError(f"--seq-length {seq_length} must be a positive multiple of the SFT block "
                            f"size {block_size}")
        excluded = {int(i) for i in excluded_ids} | {int(eod_id)}
        self.content_ids = numpy.array([i for i in range(vocab_size) if i not in excluded], dtype=numpy.int64)
        if len(self.content_ids) < 2:
            raise DataError(f"mock SFT data needs at least 2 token ids besides EOD and mask, vocabulary "
                            f"size {vocab_size} leaves {len(self.content_ids)}")
        self.seq_length, self.eod_id, self.block_size = int(seq_length), int(eod_id), int(block_size)
        self.seed = int(seed) % (2 ** 63)
        self.length = NUM_SAMPLES if num_samples is None else max(1, int(num_samples))

    def __len__(self) -> int:
        return self.length

    def conversation(self, rng: numpy.random.Generator):
        """(tokens, loss mask) of one conversation, padded to the block size."""
        prompt = self.content_ids[rng.integers(len(self.content_ids), size=int(rng.integers(2, 13)))]
        tokens = numpy.concatenate([prompt, prompt[::-1], [self.eod_id]]).astype(numpy.int64)
        mask = numpy.concatenate([numpy.zeros(len(prompt), bool), numpy.ones(len(prompt) + 1, bool)])
        return pad_to_block_multiple(tokens, mask, self.block_size, self.eod_id)

    def __getitem__(self, idx: int) -> dict:
        """``tokens`` LongTensor[L], ``loss_mask`` BoolTensor[L], ``document_ids`` LongTensor[L]."""
        if not 0 <= int(idx) < len(self):
            raise IndexError(f"sample {idx} is outside [0, {len(self)})")
        rng = numpy.random.default_rng([self.seed, int(idx), 0x5F7])
        conversations, used = [], 0
        while True:
            tokens, mask = self.conversation(rng)
            if conversations and used + len(tokens) > self.seq_length:
                break
            conversations.append((tokens, mask))
            used += len(tokens)
            if used >= self.seq_length:
                break
        sample = packed_sample(conversations, self.seq_length, self.eod_id)
        return {key: torch.from_numpy(value) for key, value in sample.items()}
