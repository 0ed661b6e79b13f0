"""A tiny deterministic stand-in for the model in decoding tests: two float64 attention layers over
token + position embeddings with random weights. Its logits depend on every visible token (through
the mask), the second layer's keys depend on what the first layer's rows saw (so a wrong mask on
committed rows changes the output), and it honours a ``DecodeCache`` like the real core attention.
"""

from __future__ import annotations

import math

import pytest
import torch


class ToyModel:
    """``model(tokens [1, s], positions [1, s], mask [s, s_k]) -> logits [1, s, vocab]``."""

    def __init__(self, vocab: int, seed: int, dim: int = 16, scale: float = 4.0, max_positions: int = 256):
        g = torch.Generator().manual_seed(seed)

        def rand(*shape, std=1.0):
            return torch.randn(*shape, generator=g, dtype=torch.float64) * std

        self.embed = rand(vocab, dim)
        self.pos = rand(max_positions, dim)
        self.layers = [tuple(rand(dim, dim, std=dim ** -0.5) for _ in range(4)) for _ in range(2)]
        self.out = rand(dim, vocab, std=scale * dim ** -0.5)
        self.cache = None
        self.calls = 0

    def __call__(self, tokens, positions, mask):
        self.calls += 1
        h = self.embed[tokens[0]] + self.pos[positions[0]]
        for layer, (wq, wk, wv, wo) in enumerate(self.layers):
            q, k, v = h @ wq, h @ wk, h @ wv
            if self.cache is not None:
                k, v = self.cache.extend(layer, k[:, None, None, :], v[:, None, None, :])
                k, v = k[:, 0, 0, :], v[:, 0, 0, :]
            scores = (q @ k.T) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(~mask, float("-inf"))
            h = h + torch.tanh(scores.softmax(-1) @ v @ wo)
        return (h @ self.out)[None]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is ~50x faster than several on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
