"""Micro-batches in training order: GlobalBatchSampler indices -> dataset samples -> collate.

    sampler = GlobalBatchSampler(len(train), consumed, G, mbs, dp_rank, dp_size)
    batches = micro_batch_loader(train, sampler, num_workers=2)
    for step in range(train_iters):
        micro_batches = [next(batches) for _ in range(sampler.num_micro_batches)]

Each micro-batch is ``collate``'s dict (batch-first): ``tokens`` [B, L], ``loss_mask`` [B, L],
``document_ids`` [B, L], ``sample_index`` [B] (global sample indices: they seed the noise).
"""

from __future__ import annotations

from typing import Iterator

import torch

from megatron_dllm.data.batch import collate
from megatron_dllm.data.sampler import GlobalBatchSampler


class _GlobalIndexed(torch.utils.data.Dataset):
    """Reads global sample g as dataset item ``g % len(dataset)`` and keeps g."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.length = len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, global_index: int):
        return global_index, self.dataset[global_index % self.length]


class _MicroBatchIndices(torch.utils.data.Sampler):
    """The sampler's micro-batches, step after step, from ``start_step`` on (no end)."""

    def __init__(self, sampler: GlobalBatchSampler, start_step: int) -> None:
        self.sampler = sampler
        self.start_step = start_step

    def __iter__(self):
        step = self.start_step
        while True:
            yield from self.sampler.micro_batches_for_step(step)
            step += 1


def _collate_pairs(pairs):
    indices = [g for g, _ in pairs]
    return collate([s for _, s in pairs], indices)


def micro_batch_loader(dataset, sampler: GlobalBatchSampler, *, num_workers: int = 0,
                       start_step: int = 0) -> Iterator[dict]:
    """Endless iterator of this rank's collated micro-batches, in step order.

    Args:
        dataset: a dataset of ``build_datasets`` (len must equal ``sampler.total_samples``).
        sampler: this rank's GlobalBatchSampler.
        num_workers: DataLoader worker processes (0: load in this process).
        start_step: first step to deliver (the sampler's consumed count is step 0).
    """
    if len(dataset) != sampler.total_samples:
        raise ValueError(f"sampler.total_samples {sampler.total_samples} != len(dataset) {len(dataset)}")
    loader = torch.utils.data.DataLoader(
        _GlobalIndexed(dataset), batch_sampler=_MicroBatchIndices(sampler, start_step),
        num_workers=num_workers, collate_fn=_collate_pairs)
    return iter(loader)
