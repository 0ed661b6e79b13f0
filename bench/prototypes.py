"""Prototypes measured by the benchmarks to size a proposed fix; not part of the package.

``TiledSparseSDPA``: block-sparse attention for CPU built from plain SDPA calls (FlexAttention has no
CPU backward in torch 2.13). Queries are cut into tiles of ``tile`` rows; for each query tile only the
key tiles that hold at least one allowed pair are kept (merged into contiguous ranges, so K / V are
sliced views, concatenated when there are several ranges), and SDPA runs on them with the matching
slice of an additive float mask, or with no mask where the slice is all allowed. The plan (ranges and
mask slices) depends on the mask only, so it is built once per mask, as the package caches masks.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F


def _ranges(tiles: torch.Tensor, tile: int) -> List[Tuple[int, int]]:
    """Contiguous [start, end) key ranges covering the True key tiles."""
    out: List[Tuple[int, int]] = []
    for j in tiles.nonzero().flatten().tolist():
        start, end = j * tile, (j + 1) * tile
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


class TiledSparseSDPA:
    """Attention of q [b, h, S, d] over k / v [b, h, S, d] under one bool mask [S, S] (True = attend)."""

    def __init__(self, allowed: torch.Tensor, tile: int = 256, dtype=torch.float32):
        S = allowed.shape[-1]
        if allowed.dim() == 3:
            if allowed.shape[0] != 1:
                raise ValueError("the prototype takes one mask shared by the batch")
            allowed = allowed[0]
        if S % tile:
            raise ValueError(f"tile {tile} must divide the length {S}")
        n = S // tile
        any_tile = allowed.view(n, tile, n, tile).any(dim=3).any(dim=1)
        self.tile = tile
        self.plan: List[Tuple[List[Tuple[int, int]], Optional[torch.Tensor]]] = []
        for i in range(n):
            ranges = _ranges(any_tile[i], tile)
            rows = allowed[i * tile:(i + 1) * tile]
            sub = torch.cat([rows[:, a:b] for a, b in ranges], dim=1)
            mask = None if bool(sub.all()) else torch.zeros(sub.shape, dtype=dtype).masked_fill_(~sub, float("-inf"))
            self.plan.append((ranges, mask))
        self.tile_density = float(any_tile.float().mean())

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        outs = []
        t = self.tile
        for i, (ranges, mask) in enumerate(self.plan):
            if len(ranges) == 1:
                a, b = ranges[0]
                kk, vv = k[:, :, a:b], v[:, :, a:b]
            else:
                kk = torch.cat([k[:, :, a:b] for a, b in ranges], dim=2)
                vv = torch.cat([v[:, :, a:b] for a, b in ranges], dim=2)
            outs.append(F.scaled_dot_product_attention(q[:, :, i * t:(i + 1) * t], kk, vv, attn_mask=mask,
                                                       scale=scale))
        return torch.cat(outs, dim=2)
