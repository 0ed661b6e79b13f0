"""Context parallelism (CP) in our core attention: each CP rank holds some query rows, all keys are gathered.

Each of the N ranks of a CP group holds the rows ``split.rows[rank]`` of the model input
(``diffusion.context_split.split_rows``: any partition into equal parts; the balanced one by
default) and runs every layer on them. Everything but attention is per position, so only the
core attention needs the other ranks: it all-gathers the keys and values of the group and puts them
back in input order, so the mask a rank passes is simply its rows of the one-rank mask,
``[rows of this rank, S]`` with keys in position order. This is exact for any mask (block
diffusion, documents, causal); its cost is one all-gather of K / V per layer (and a reduce-scatter
of their gradients), the same volume as a ring that visits every rank, without assuming anything
about which blocks of the mask are empty.

The split is handed to the model per forward (``DiffusionGPTModel.forward(..., cp_split=split)``),
which sets it on every core-attention module for the call, as ``position_ids`` drive RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ContextParallelSplit:
    """Which input positions each CP rank holds: ``rows [N, S / N]`` long, ``rows[r]`` rank r's rows;
    ``rank``: the rank this object belongs to."""

    rows: torch.Tensor
    rank: int = 0  # the CP rank this split object was made for (local_rows)

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def total(self) -> int:
        return int(self.rows.numel())

    def local(self, rank: int) -> torch.Tensor:
        """[S / N] positions of rank ``rank``."""
        return self.rows[rank]

    def local_rows(self) -> torch.Tensor:
        """[S / N] positions of the rank this split was made for."""
        return self.rows[self.rank]

    @cached_property
    def key_order(self) -> torch.Tensor:
        """[S]: index into the rank-order concatenation of all rows that puts it in position order."""
        return torch.argsort(self.rows.reshape(-1))


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 0 over a group (rank order); backward: each rank's slice of the summed grads."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        grad = grad.contiguous()
        if dist.get_backend(group) == "nccl":
            out = torch.empty_like(grad.chunk(size, dim=0)[rank])
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        summed = grad.clone()  # gloo has no reduce-scatter: all-reduce, keep this rank's slice
        dist.all_reduce(summed, group=group)
        return summed.chunk(size, dim=0)[rank].contiguous(), None


def gather_keys(local: torch.Tensor, split: ContextParallelSplit, group) -> torch.Tensor:
    """``[S / N, ...]`` keys or values of this rank -> ``[S, ...]`` of the whole input, in position order.

    Differentiable: the gradient of a rank's input is the sum over ranks of the gradients of its rows.
    """
    size = dist.get_world_size(group)
    if size != split.size:
        raise ValueError(f"the CP split has {split.size} parts but the context-parallel group {size} ranks")
    if local.shape[0] * size != split.total:
        raise ValueError(f"this rank holds {local.shape[0]} positions; the CP split gives each rank "
                         f"{split.total // size}")
    gathered = _GatherSequence.apply(local, group)
    return gathered.index_select(0, split.key_order.to(local.device))
