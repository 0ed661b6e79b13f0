"""KV cache for block-wise diffusion decoding.

Keys and values of completed blocks are fixed (a block is never revisited), so they are computed
once, "committed", and every later forward feeds only the rows not yet cached. A call may feed the
last finished block and the block being decoded together: ``commit_tokens`` says how many of its
leading rows are written (the finished block's), the others are used and dropped. Keys arrive
already rotated (RoPE is applied before core attention, at the absolute positions given to the
model), so cached and new keys concatenate directly. Per tensor-parallel rank, the cache holds that
rank's heads. Layout Megatron's: ``[s, b, groups, head_dim]``.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch


class DecodeCache:
    """Per-layer keys/values of the committed prefix; ``commit_tokens`` (set around a call) is how
    many leading rows of that call extend it (0: none)."""

    def __init__(self):
        self.keys: Dict[int, torch.Tensor] = {}
        self.values: Dict[int, torch.Tensor] = {}
        self.commit_tokens = 0

    @property
    def length(self) -> int:
        """Committed tokens (0 before the first commit)."""
        return next(iter(self.keys.values())).shape[0] if self.keys else 0

    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the cached prefix followed by this call's; the first ``commit_tokens`` of
        this call's are stored."""
        cached = self.keys[layer].shape[0] if layer in self.keys else 0
        if cached:
            key = torch.cat([self.keys[layer], key], dim=0)
            value = torch.cat([self.values[layer], value], dim=0)
        if self.commit_tokens:
            end = cached + self.commit_tokens
            self.keys[layer], self.values[layer] = key[:end].detach(), value[:end].detach()
        return key, value


def attach(model, cache) -> None:
    """Point every DiffusionCoreAttention of ``model`` at ``cache`` (None detaches)."""
    from megatron_dllm.model.core_attention import DiffusionCoreAttention

    for module in model.modules():
        if isinstance(module, DiffusionCoreAttention):
            module.decode_cache = cache
