"""Greedy left-to-right decoding of an AR (next-token) model: the baseline diffusion decoding is
compared against. The logit at position i predicts token i + 1 (AR label alignment).

``forward`` is the same call as in ``decoding.decode``: ``(tokens [1, s], positions [1, s],
mask [s, s_k]) -> logits [1, s, V]``, mask True = may attend. With a ``DecodeCache`` attached to
the model, the prompt is committed once and every step feeds one token.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional

import torch

from megatron_dllm.diffusion import masks
from megatron_dllm.generate.decoding import DecodeResult
from megatron_dllm.generate.kv_cache import DecodeCache


def greedy_ar(prompt: List[int], forward: Callable, max_new_tokens: int, *, eos_id: Optional[int] = None,
              device="cpu", cache: Optional[DecodeCache] = None) -> DecodeResult:
    """Generate up to ``max_new_tokens`` after ``prompt``, stopping after EOS (not returned)."""
    if not prompt:
        raise ValueError("AR decoding needs a non-empty prompt")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be positive")
    start = time.perf_counter()
    seq = list(prompt)
    result = DecodeResult(tokens=[], num_forward_passes=0)

    def run(lo: int) -> torch.Tensor:
        hi = len(seq)
        mask = masks.block_causal_mask(hi, 1, device=device)
        if cache is None:
            tokens = torch.tensor([seq], dtype=torch.long, device=device)
            return forward(tokens, torch.arange(hi, device=device)[None], mask)[0, -1]
        cache.commit_tokens = hi - lo
        try:
            tokens = torch.tensor([seq[lo:hi]], dtype=torch.long, device=device)
            return forward(tokens, torch.arange(lo, hi, device=device)[None], mask[lo:hi])[0, -1]
        finally:
            cache.commit_tokens = 0

    lo = 0
    for _ in range(max_new_tokens):
        logits = run(lo)
        lo = len(seq)
        result.num_forward_passes += 1
        result.per_step_accepted.append(1)
        token = int(logits.float().argmax())
        if eos_id is not None and token == eos_id:
            result.stopped_at_eos = True
            break
        seq.append(token)
    result.tokens = seq[len(prompt):]
    result.seconds = time.perf_counter() - start
    return result
