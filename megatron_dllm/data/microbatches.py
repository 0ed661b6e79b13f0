"""Batch assembly for one step: this data-parallel rank's micro-batches of a global batch."""

from __future__ import annotations

from typing import Dict, List

import torch

from megatron_dllm.data.batch import collate
from megatron_dllm.data.sampler import GlobalBatchSampler


def micro_batches(dataset, first_sample: int, global_batch_size: int, micro_batch_size: int,
                  data_parallel_rank: int, data_parallel_size: int) -> List[Dict[str, torch.Tensor]]:
    """The micro-batches (``collate``d, batch-first) that rank ``data_parallel_rank`` of
    ``data_parallel_size`` trains on in the global batch starting at sample ``first_sample``.

    Sample indices past the end of ``dataset`` wrap around; each micro-batch carries the global
    sample index of its rows (the noise seed). A dataset with its own ``collate`` (preference pairs,
    ``data/dpo_batches.py``) is stacked with it.
    """
    stack = getattr(dataset, "collate", collate)
    sampler = GlobalBatchSampler(
        total_samples=len(dataset), consumed_samples=first_sample,
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
        data_parallel_rank=data_parallel_rank, data_parallel_size=data_parallel_size,
    )
    out = []
    for indices in sampler.micro_batches_for_step(0):
        samples = [dataset[i % len(dataset)] for i in indices]
        out.append(stack(samples, indices))
    return out
