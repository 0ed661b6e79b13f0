"""KV cache for block-wise diffusion decoding.

Keys and values of completed blocks are fixed (a block is never revisited), so they are computed
once, "committed", and every later forward feeds only the block being decoded. Keys arrive already
rotated (RoPE is applied before core attention, at the absolute positions given to the model), so
cached and new keys concatenate directly. Per tensor-parallel rank, the cache holds that rank's
heads. Layout Megatron's: ``[s, b, groups, head_dim]``.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch


class DecodeCache:
    """Per-layer keys/values of the committed prefix; ``commit`` decides whether a call extends it."""

    def __init__(self):
        self.keys: Dict[int, torch.Tensor] = {}
        self.values: Dict[int, torch.Tensor] = {}
        self.commit = False

    @property
    def length(self) -> int:
        """Committed tokens (0 before the first commit)."""
        return next(iter(self.keys.values())).shape[0] if self.keys else 0

    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the cached prefix followed by this call's; stored when committing."""
        if layer in self.keys:
            key = torch.cat([self.keys[layer], key], dim=0)
            value = torch.cat([self.values[layer], value], dim=0)
        if self.commit:
            self.keys[layer], self.values[layer] = key.detach(), value.detach()
        return key, value


def attach(model, cache) -> None:
    """Point every DiffusionCoreAttention of ``model`` at ``cache`` (None detaches)."""
    from megatron_dllm.model.core_attention import DiffusionCoreAttention

    for module in model.modules():
        if isinstance(module, DiffusionCoreAttention):
            module.decode_cache = cache
