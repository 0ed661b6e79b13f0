"""Gaussian noise on the embedding output at [MASK] positions (LLaDA2.0 stability trick, METHOD.md 2.7).

A converted AR model has never seen the [MASK] embedding, which decayed towards zero; LLaDA2.0 adds
independent Gaussian noise to the embedding-layer output at every masked position during the first
iterations. This forward hook on the model's ``embedding`` module does that. The noise of a row is a
function of (seed, global sample index, iteration) only, so every TP rank adds the same values and a
resumed run adds what it would have added; under sequence parallelism each rank adds its slice.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from megatron.core import parallel_state

from megatron_dllm.diffusion.seeding import noise_generator

STREAM_EMBEDDING = 2


class EmbeddingNoise:
    """Forward hook adding N(0, std^2) at mask-token positions while ``active``."""

    def __init__(self, mask_token_id: int, std: float, seed: int):
        self.mask_token_id = mask_token_id
        self.std = std
        self.seed = seed
        self.active = False
        self.sample_indices: Optional[List[int]] = None
        self.iteration = 0

    def attach(self, model) -> None:
        """Register on ``model.embedding`` (first pipeline stage only; a no-op elsewhere)."""
        embedding = getattr(model, "embedding", None)
        if embedding is not None:
            embedding.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if not self.active or self.std <= 0 or self.sample_indices is None:
            return output
        input_ids = kwargs.get("input_ids", args[0] if args else None)  # [b, s]
        seq, batch = input_ids.shape[1], input_ids.shape[0]
        hidden = output.shape[-1]
        noise = torch.stack([
            torch.randn(seq, hidden, generator=noise_generator(self.seed, s, self.iteration,
                                                               stream=STREAM_EMBEDDING))
            for s in self.sample_indices
        ], dim=1)  # [s, b, h]
        noise = noise * (input_ids.t() == self.mask_token_id).unsqueeze(-1).cpu()
        if output.shape[0] != seq:  # sequence parallel: this rank holds a contiguous slice
            rank = parallel_state.get_tensor_model_parallel_rank()
            local = output.shape[0]
            noise = noise[rank * local:(rank + 1) * local]
        if noise.shape[1] != batch:
            raise ValueError("embedding noise: sample indices do not match the micro-batch")
        return output + (self.std * noise).to(device=output.device, dtype=output.dtype)
