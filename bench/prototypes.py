"""The block-sparse CPU attention as a standalone callable, for the benchmark's ``proto_tiled`` row.

The implementation is the package's (``megatron_dllm.model.sparse_sdpa``); this wrapper only builds
the tile plan once for a given mask and exposes it, so the benchmark can time the attention with a
prebuilt plan and report the plan's memory next to "ours" (which goes through DiffusionCoreAttention
and its plan cache).
"""

from __future__ import annotations

import torch

from megatron_dllm.model.sparse_sdpa import plan_one, run_plan


class TiledSparseSDPA:
    """Attention of q [b, h, S, d] over k / v [b, h, S, d] under one bool mask [S, S] (True = attend)."""

    def __init__(self, allowed: torch.Tensor, tile: int = 256, dtype=torch.float32):
        if allowed.dim() == 3:
            if allowed.shape[0] != 1:
                raise ValueError("the prototype takes one mask shared by the batch")
            allowed = allowed[0]
        if allowed.shape[-1] % tile:
            raise ValueError(f"tile {tile} must divide the length {allowed.shape[-1]}")
        self.tile = tile
        self.plan = plan_one(allowed, tile, dtype)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        return run_plan(q, k, v, self.plan, scale, self.tile)
