"""Deterministic global-batch sampler: which samples each data-parallel rank reads at each step.

Global sample indices run consecutively over the whole run: optimizer step ``s`` (counted from the
start of this sampler) covers the global samples ``[consumed + s*G, consumed + (s+1)*G)``, where
``consumed`` is the number of samples consumed before this sampler started (0 for a fresh run, the
checkpoint's count on resume) and G the global batch size. Data-parallel rank r reads the r-th
contiguous slice of G/DP of them, cut into micro-batches of ``micro_batch_size``.

A global sample index keeps increasing across epochs (it seeds the diffusion noise, so a sample
seen twice gets different noise); the dataset index it reads is ``global % total_samples``.
Everything is a pure function of (consumed, step), so a resumed run needs only the consumed count.
"""

from __future__ import annotations

from typing import Iterator, List

from megatron_dllm.data.errors import DataError


class GlobalBatchSampler:
    """Per optimizer step, the micro-batches (lists of global sample indices) of one DP rank.

    Args:
        total_samples: length of the dataset (dataset index = global index % total_samples).
        consumed_samples: global samples consumed before step 0 of this sampler (resume point).
        global_batch_size: G, samples per optimizer step over all DP ranks.
        micro_batch_size: samples per micro-batch per DP rank.
        data_parallel_rank: r in [0, data_parallel_size).
        data_parallel_size: DP.

    Iterating yields, for step 0, 1, 2, ... (without end: the training loop decides when to stop),
    a list of ``G / (micro_batch_size * DP)`` micro-batches, each a list of ``micro_batch_size``
    global sample indices.
    """

    def __init__(self, total_samples: int, consumed_samples: int, global_batch_size: int,
                 micro_batch_size: int, data_parallel_rank: int, data_parallel_size: int) -> None:
        for name, value, low in (("total samples", total_samples, 1),
                                 ("consumed samples", consumed_samples, 0),
                                 ("--global-batch-size", global_batch_size, 1),
                                 ("--micro-batch-size", micro_batch_size, 1),
                                 ("data-parallel size", data_parallel_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise DataError(f"data-parallel rank {data_parallel_rank} is outside "
                            f"[0, {data_parallel_size})")
        if global_batch_size % (micro_batch_size * data_parallel_size):
            raise DataError(
                f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size "
                f"{micro_batch_size} x data-parallel size {data_parallel_size}")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size

    @property
    def samples_per_rank(self) -> int:
        """G / DP: samples one DP rank reads per step."""
        return self.global_batch_size // self.data_parallel_size

    @property
    def num_micro_batches(self) -> int:
        """G / (micro_batch_size * DP): micro-batches per step per DP rank."""
        return self.samples_per_rank // self.micro_batch_size

    def consumed_after(self, step_index: int) -> int:
        """Global samples consumed once step ``step_index`` (0-based) has run."""
        return self.consumed_samples + (step_index + 1) * self.global_batch_size

    def dataset_index(self, global_index: int) -> int:
        """The dataset index a global sample index reads: ``global_index % total_samples``."""
        return global_index % self.total_samples

    def micro_batches_for_step(self, step_index: int) -> List[List[int]]:
        """This rank's micro-batches of global sample indices at step ``step_index`` (>= 0).

        A pure function of (consumed_samples, step_index): resuming with consumed_samples = c + k*G
        and step j gives the same indices as step k + j of a run started at c.
        """
        if step_index < 0:
            raise DataError(f"step index must be >= 0, got {step_index}")
        first = (self.consumed_samples + step_index * self.global_batch_size
                 + self.data_parallel_rank * self.samples_per_rank)
        mbs = self.micro_batch_size
        return [list(range(first + m * mbs, first + (m + 1) * mbs))
                for m in range(self.num_micro_batches)]

    def __iter__(self) -> Iterator[List[List[int]]]:
        step = 0
        while True:
            yield self.micro_batches_for_step(step)
            step += 1
