"""Block-wise semi-autoregressive diffusion decoding with confidence thresholds (METHOD.md 10).

The output is laid out in blocks aligned to absolute position 0 (the prompt's last block may be
partial). The sequence ends at prompt + gen_length: slots after it that complete the last block are
computed (shapes stay whole blocks, as sequence parallelism wants) but no query attends to them, so
the model sees exactly the slots it is asked to fill. Block by block, every step runs the model, samples a token at each still-masked slot of the
block, and accepts all whose probability exceeds ``threshold``, or else the ``quota`` most confident
(the block length split evenly over ``steps``). With a KV cache, the prompt's complete blocks and each
finished block are committed once and every decoding step feeds only the current block.

``forward(tokens [1, s], positions [1, s], mask [s, s_k]) -> logits [1, s, V]`` is the model call
(full vocabulary on every rank); ``mask`` is a bool tensor, True = may attend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from megatron_dllm.diffusion import masks
from megatron_dllm.generate.kv_cache import DecodeCache


@dataclass
class DecodeConfig:
    """Decoding settings (defaults: LLaDA2.0's evaluation settings, METHOD.md 10)."""

    mask_id: int
    gen_length: int = 128
    block_length: int = 32
    steps: int = 32                 # decoding steps per block
    threshold: float = 0.95         # accept every masked token more confident than this
    temperature: float = 0.0        # 0 = greedy
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    eos_id: Optional[int] = None
    eos_early_stop: bool = True
    use_cache: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.block_length < 1 or self.gen_length < 1:
            raise ValueError("--block-length and --gen-length must be positive")
        if not 1 <= self.steps <= self.block_length:
            raise ValueError(f"--steps must be in [1, block length {self.block_length}], got {self.steps}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("--threshold must be in [0, 1]")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError("--top-p must be in (0, 1]")


@dataclass
class DecodeResult:
    tokens: List[int]               # generated ids (up to and excluding EOS)
    num_forward_passes: int         # decoding forwards (each accepts >= 1 token)
    num_cache_passes: int = 0       # prefill / commit forwards of the KV cache
    seconds: float = 0.0
    stopped_at_eos: bool = False
    per_step_accepted: List[int] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> float:
        """Tokens decoded per decoding forward (the parallelism the threshold bought)."""
        return sum(self.per_step_accepted) / max(self.num_forward_passes, 1)


def step_quotas(block_length: int, steps: int) -> List[int]:
    """Tokens to accept at least per step: block_length split evenly, the remainder first."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _filter_logits(logits: torch.Tensor, top_k: Optional[int], top_p: Optional[float]) -> torch.Tensor:
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample(logits: torch.Tensor, cfg: DecodeConfig, generator: torch.Generator):
    """logits [n, V] -> (tokens [n], confidence [n] = probability of the chosen token)."""
    logits = logits.float()
    if cfg.temperature == 0:
        probs = logits.softmax(-1)
        conf, tokens = probs.max(dim=-1)
        return tokens, conf
    probs = _filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    tokens = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
    return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1)


def accept(confidence: torch.Tensor, still_masked: torch.Tensor, threshold: float, quota: int) -> torch.Tensor:
    """Which slots to fill: all masked ones above ``threshold``, at least the ``quota`` most confident."""
    conf = torch.where(still_masked, confidence, torch.full_like(confidence, -1.0))
    chosen = (conf > threshold) & still_masked
    need = min(quota, int(still_masked.sum()))
    if int(chosen.sum()) < need:
        top = torch.topk(conf, need).indices
        chosen[top] = True
    return chosen


def decode(prompt: List[int], forward: Callable, cfg: DecodeConfig, *, device="cpu",
           cache: Optional[DecodeCache] = None) -> DecodeResult:
    """Generate after ``prompt`` (a list of ids). ``cache`` must be attached to the model when
    ``cfg.use_cache`` (``megatron_dllm.generate.kv_cache.attach``)."""
    cfg.validate()
    if cfg.use_cache and cache is None:
        raise ValueError("use_cache needs a DecodeCache attached to the model")
    start = time.perf_counter()
    LB, P = cfg.block_length, len(prompt)
    total = P + cfg.gen_length
    padded = -(-total // LB) * LB
    x = torch.full((1, padded), cfg.mask_id, dtype=torch.long, device=device)
    # block-causal; keys past the end are invisible, and each padding slot sees itself only
    index = torch.arange(padded, device=device)
    attend = masks.block_causal_mask(padded, LB, device=device) & (index < total)[None, :]
    attend = attend | torch.eye(padded, dtype=torch.bool, device=device)
    x[0, :P] = torch.tensor(prompt, dtype=torch.long, device=device)
    quotas = step_quotas(LB, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    result = DecodeResult(tokens=[], num_forward_passes=0)
    first_block = P // LB

    def run(lo: int, hi: int, commit: bool = False):
        positions = torch.arange(lo, hi, device=device)[None]
        mask = attend[:hi, :hi]
        if cfg.use_cache:
            cache.commit = commit
            try:  # rows lo..hi against keys 0..hi (cached prefix + this call)
                return forward(x[:, lo:hi], positions, mask[lo:])
            finally:
                cache.commit = False
        return forward(x[:, :hi], torch.arange(hi, device=device)[None], mask)[:, lo:hi]

    if cfg.use_cache and first_block > 0:
        run(0, first_block * LB, commit=True)
        result.num_cache_passes += 1
    stop = False
    for block in range(first_block, padded // LB):
        lo, hi = block * LB, (block + 1) * LB
        for step in range(cfg.steps):
            still = x[0, lo:hi] == cfg.mask_id
            still[: max(0, P - lo)] = False  # prompt tokens of a partial block
            still[max(0, total - lo):] = False  # padding after the end
            if not bool(still.any()):
                break
            logits = run(lo, hi)[0]                      # [LB, V]
            result.num_forward_passes += 1
            tokens, conf = sample(logits, cfg, gen)
            chosen = accept(conf, still, cfg.threshold, quotas[step])
            x[0, lo:hi] = torch.where(chosen, tokens, x[0, lo:hi])
            result.per_step_accepted.append(int(chosen.sum()))
            if cfg.eos_id is not None and cfg.eos_early_stop:
                generated = x[0, P:hi]
                eos = (generated == cfg.eos_id).nonzero()
                if len(eos) and not bool((generated[: int(eos[0])] == cfg.mask_id).any()):
                    stop = True
                    break
        if stop:
            break
        if cfg.use_cache:
            run(lo, hi, commit=True)
            result.num_cache_passes += 1
        if cfg.eos_id is not None and bool((x[0, P:hi] == cfg.eos_id).any()):
            break
    out = x[0, P:P + cfg.gen_length].tolist()
    if cfg.eos_id is not None and cfg.eos_id in out:
        out = out[: out.index(cfg.eos_id)]
        result.stopped_at_eos = True
    if cfg.mask_id in out:  # stopped before the end: keep the decoded prefix
        out = out[: out.index(cfg.mask_id)]
    result.tokens = out
    result.seconds = time.perf_counter() - start
    return result
