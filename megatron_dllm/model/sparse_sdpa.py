"""Block-sparse attention on CPU from plain SDPA calls: skip key tiles a query tile cannot see.

FlexAttention skips fully masked tiles on CUDA but has no CPU backward (torch 2.13). Under the
block-diffusion and document masks most (query tile, key tile) pairs are empty (about 90% at
2L = 4096 with packed documents), so for each query tile this runs SDPA only over the key tiles that
hold an allowed pair (contiguous ranges of K / V), with the matching slice of an additive mask, or no
mask where the slice is all allowed. The plan (ranges and mask slices) depends only on the mask: it is
cached per mask tensor (masks come from the cache of ``megatron_dllm.diffusion.masks``, so one plan
serves every layer and every step with the same documents). Outputs equal dense-mask SDPA up to
float rounding; gradients flow through the slices.
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

TILE = 256
MIN_LENGTH = 2 * TILE

Plan = List[Tuple[List[Tuple[int, int]], Optional[torch.Tensor]]]
_PLANS: dict = {}  # id(mask) -> (weakref to mask, dtype, shape, plans); dropped when the mask dies


def _ranges(tiles: torch.Tensor, tile: int) -> List[Tuple[int, int]]:
    out: List[Tuple[int, int]] = []
    for j in tiles.nonzero().flatten().tolist():
        start, end = j * tile, (j + 1) * tile
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def plan_one(allowed: torch.Tensor, tile: int, dtype: torch.dtype) -> Plan:
    """Tile plan of one [Sq, Sk] bool mask: per query tile, its key ranges and additive mask slice."""
    n_q, n_k = allowed.shape[-2] // tile, allowed.shape[-1] // tile
    any_tile = allowed.view(n_q, tile, n_k, tile).any(dim=3).any(dim=1)
    plan: Plan = []
    for i in range(n_q):
        ranges = _ranges(any_tile[i], tile)
        rows = allowed[i * tile:(i + 1) * tile]
        sub = torch.cat([rows[:, a:b] for a, b in ranges], dim=1)
        mask = None if bool(sub.all()) else torch.zeros(sub.shape, dtype=dtype).masked_fill_(~sub, float("-inf"))
        plan.append((ranges, mask))
    return plan


def usable(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> bool:
    """True when the tiled path applies: CPU, enough keys, tile-aligned queries and keys.

    Queries and keys may differ in number (a context-parallel rank's rows against all keys)."""
    sq, sk = q.shape[2], k.shape[2]
    return (q.device.type == "cpu" and mask.dim() == 4 and mask.shape[1] == 1 and sk >= MIN_LENGTH
            and sq % TILE == 0 and sk % TILE == 0 and mask.shape[-2] == sq and mask.shape[-1] == sk)


def plans_for(mask: torch.Tensor, dtype: torch.dtype) -> List[Plan]:
    """One plan per mask row of the batch (mask [b or 1, 1, Sq, Sk] bool), cached per mask tensor.

    The cache holds the tensor the 4-d view was taken from (the cached mask of ``diffusion.masks``),
    weakly: a plan lives as long as its mask.
    """
    owner = mask._base if mask._base is not None else mask
    cached = _PLANS.get(id(owner))
    if cached is not None and cached[0]() is owner and cached[1:3] == (dtype, tuple(mask.shape)):
        return cached[3]
    plans = [plan_one(mask[r, 0], TILE, dtype) for r in range(mask.shape[0])]
    if cached is None:
        weakref.finalize(owner, _PLANS.pop, id(owner), None)
    _PLANS[id(owner)] = (weakref.ref(owner), dtype, tuple(mask.shape), plans)
    return plans


def run_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, scale: float,
             tile: int = TILE, enable_gqa: bool = False) -> torch.Tensor:
    """Attention of q [n, h, Sq, d] over k / v [n, g, Sk, d] following one tile plan -> [n, h, Sq, d]
    (``enable_gqa``: g divides h, each K / V head serves h / g query heads)."""
    outs = []
    for i, (ranges, sub_mask) in enumerate(plan):
        if len(ranges) == 1:
            a, b = ranges[0]
            kk, vv = k[:, :, a:b], v[:, :, a:b]
        else:
            kk = torch.cat([k[:, :, a:b] for a, b in ranges], dim=2)
            vv = torch.cat([v[:, :, a:b] for a, b in ranges], dim=2)
        outs.append(F.scaled_dot_product_attention(q[:, :, i * tile:(i + 1) * tile], kk, vv,
                                                   attn_mask=sub_mask, scale=scale, enable_gqa=enable_gqa))
    return torch.cat(outs, dim=2)


def sparse_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                enable_gqa: bool = False) -> torch.Tensor:
    """q [b, h, Sq, d], k / v [b, g, Sk, d] (g = h, or a divisor of h with ``enable_gqa``), mask
    [b or 1, 1, Sq, Sk] bool (True = may attend) -> [b, h, Sq, d]."""
    plans = plans_for(mask, q.dtype)
    if len(plans) == 1:  # one mask for the whole batch
        return run_plan(q, k, v, plans[0], scale, enable_gqa=enable_gqa)
    return torch.cat([run_plan(q[r:r + 1], k[r:r + 1], v[r:r + 1], plans[r], scale, enable_gqa=enable_gqa)
                      for r in range(q.shape[0])], dim=0)
