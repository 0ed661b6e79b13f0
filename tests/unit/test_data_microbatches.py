"""data/microbatches.py: a DP rank's micro-batches of one global batch (contiguous slice, wrap-around)."""

import torch

from megatron_dllm.data.microbatches import micro_batches

L = 6


def _dataset(n):
    return [{"tokens": torch.full((L,), 10 + i), "loss_mask": torch.ones(L, dtype=torch.bool),
             "document_ids": torch.zeros(L, dtype=torch.long)} for i in range(n)]


def test_ranks_read_contiguous_slices_and_wrap_around():
    data = _dataset(5)
    ranks = [micro_batches(data, 3, global_batch_size=8, micro_batch_size=2, data_parallel_rank=r,
                           data_parallel_size=2) for r in range(2)]
    assert [[b["sample_index"].tolist() for b in rank] for rank in ranks] == [[[3, 4], [5, 6]], [[7, 8], [9, 10]]]
    first = ranks[0][1]  # global samples 5 and 6 read dataset items 0 and 1
    assert first["tokens"].shape == (2, L)
    assert first["tokens"][:, 0].tolist() == [10, 11]
    assert first["loss_mask"].dtype == torch.bool and first["document_ids"].dtype == torch.long
