"""Gaussian noise on the embedding output at [MASK] positions (LLaDA2.0 stability trick, METHOD.md 2.7).

A converted AR model has never seen the [MASK] embedding, which decayed towards zero; LLaDA2.0 adds
independent Gaussian noise to the embedding-layer output at every masked position during the first
iterations. This forward hook on the model's ``embedding`` module does that. The noise of a row is a
function of (seed, global sample index, iteration) only, so every TP rank adds the same values and a
resumed run adds what it would have added; under sequence parallelism each rank adds its slice.

The hook is managed in one place: the objective's forward step wraps the model call of a training
micro-batch in ``applied(sample_indices, iteration)``; outside that block the hook does nothing and
holds no state (so evaluation and generation never see it).
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

import torch
from megatron.core import parallel_state

from megatron_dllm.diffusion.seeding import noise_generator

STREAM_EMBEDDING = 2


class EmbeddingNoise:
    """Forward hook adding N(0, std^2) at mask-token positions during the first ``iters`` iterations."""

    def __init__(self, mask_token_id: int, std: float, seed: int, iters: int):
        self.mask_token_id = mask_token_id
        self.std = std
        self.seed = seed
        self.iters = iters
        self._rows: Optional[tuple] = None  # (sample indices, iteration, CP positions) while applied

    @contextlib.contextmanager
    def applied(self, sample_indices: List[int], iteration: int,
                positions: Optional[Tuple[torch.Tensor, int]] = None):
        """Noise the embedding outputs of the forwards inside the block (rows: ``sample_indices``,
        global sample indices of the micro-batch) when ``iteration`` is one of the first ``iters``.

        ``positions`` (context parallelism): (this rank's input positions, input length); the noise of
        a position is the one it gets on one rank."""
        self._rows = (list(sample_indices), iteration, positions) if iteration < self.iters else None
        try:
            yield
        finally:
            self._rows = None

    def attach(self, model) -> None:
        """Register on ``model.embedding`` (first pipeline stage only; a no-op elsewhere)."""
        embedding = getattr(model, "embedding", None)
        if embedding is not None:
            embedding.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if self._rows is None or self.std <= 0:
            return output
        sample_indices, iteration, positions = self._rows
        input_ids = kwargs.get("input_ids", args[0] if args else None)  # [b, s]
        seq, batch = input_ids.shape[1], input_ids.shape[0]
        hidden = output.shape[-1]
        drawn = seq if positions is None else positions[1]
        noise = torch.stack([
            torch.randn(drawn, hidden, generator=noise_generator(self.seed, s, iteration, stream=STREAM_EMBEDDING))
            for s in sample_indices
        ], dim=1)  # [s, b, h]
        if positions is not None:
            noise = noise.index_select(0, positions[0].cpu())
        noise = noise * (input_ids.t() == self.mask_token_id).unsqueeze(-1).cpu()
        if output.shape[0] != seq:  # sequence parallel: this rank holds a contiguous slice
            rank = parallel_state.get_tensor_model_parallel_rank()
            local = output.shape[0]
            noise = noise[rank * local:(rank + 1) * local]
        if noise.shape[1] != batch:
            raise ValueError("embedding noise: sample indices do not match the micro-batch")
        return output + (self.std * noise).to(device=output.device, dtype=output.dtype)
