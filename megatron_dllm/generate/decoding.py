"""Block-wise semi-autoregressive diffusion decoding with confidence thresholds (METHOD.md 10).

The rule is the official LLaDA2.0 ``generate``'s: the output is laid out in blocks aligned to
absolute position 0 (the prompt's last block may be partial) and decoding starts at the block that
holds the prompt's end. Block by block, every step runs the model, samples a token at each
still-masked slot of the block and accepts all whose probability exceeds ``threshold``, or else the
step's quota of most confident ones: the block length split evenly over
``steps = min(steps, gen_length // minimal_topk)``. Deliberate differences, each documented in the
README's generation section and put into the reference of ``tests/unit/test_decoding_parity.py``:

* the sequence ends at prompt + gen_length: slots after it that complete the last block are
  computed (shapes stay whole blocks) but no row attends to them (the official code decodes them);
* the mask id is never sampled (its logit is -inf; the official code can accept it, and the slot
  then stays masked);
* temperature 0 is greedy (argmax); the returned tokens stop before EOS (not included);
* the early stop is checked after every step, not only after a step that accepted an EOS
  (same tokens, sometimes fewer forwards).

Variants chosen by the checkpoint's metadata (``generate/variants.py``): ``token_shift`` (the slot at
position i is predicted from the output at i - 1; a block's first slot from the last committed
row of the previous block) and ``clean_stream`` (``"causal"``: committed rows attend causally;
``generate/context.py``). Every variant is defined by a forward over the whole prefix without a
cache; the KV cache computes the same thing: the prompt's complete blocks and each finished block
are written once, in the same forward as the first decoding step of the next block
(``fuse_commit``), and every other step feeds only the current block.

``forward(tokens [1, s], positions [1, s], mask [s, s_k]) -> logits [1, s, V]`` is the model call
(full vocabulary on every rank); ``mask`` is a bool tensor, True = may attend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from megatron_dllm.generate.context import CLEAN_STREAMS, decode_mask, decode_positions
from megatron_dllm.generate.kv_cache import DecodeCache


@dataclass
class DecodeConfig:
    """Decoding settings (defaults: LLaDA2.0's evaluation settings, METHOD.md 10)."""

    mask_id: int
    gen_length: int = 128
    block_length: int = 32
    steps: int = 32                 # decoding steps per block (before the minimal_topk cap)
    threshold: float = 0.95         # accept every masked token more confident than this
    temperature: float = 0.0        # 0 = greedy
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    eos_id: Optional[int] = None
    eos_early_stop: bool = True
    use_cache: bool = True
    seed: int = 0
    minimal_topk: int = 1           # official step cap: steps <= gen_length // minimal_topk (0: no cap)
    token_shift: bool = False       # the slot at i is predicted from the output at i - 1
    clean_stream: str = "block_causal"  # committed rows attend block-causally, or "causal"
    fuse_commit: bool = True        # write finished blocks in the next block's first forward

    @property
    def effective_steps(self) -> int:
        """Steps per block after the official cap ``min(steps, gen_length // minimal_topk)``."""
        if self.minimal_topk == 0:
            return self.steps
        return min(self.steps, self.gen_length // self.minimal_topk)

    def validate(self, vocab_size: Optional[int] = None) -> None:
        """Raise ValueError (one line, naming the flag) for a setting decoding cannot run with;
        with ``vocab_size``, also for a mask / EOS id outside the model's vocabulary."""
        if self.block_length < 1:
            raise ValueError(f"--block-length {self.block_length} must be >= 1")
        if self.gen_length < 1:
            raise ValueError(f"--gen-length {self.gen_length} must be >= 1")
        if not 1 <= self.steps <= self.block_length:
            raise ValueError(f"--steps must be in [1, block length {self.block_length}], got {self.steps}")
        if self.minimal_topk < 0:
            raise ValueError("--minimal-topk must be >= 0 (0 turns the step cap off)")
        if self.effective_steps < 1:
            raise ValueError(f"--minimal-topk {self.minimal_topk} exceeds --gen-length {self.gen_length}: "
                             "no decoding step would run; lower --minimal-topk")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("--threshold must be in [0, 1]")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError("--top-p must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k {self.top_k} must be >= 1 (or left out: no top-k filter)")
        if vocab_size is not None:
            if not 0 <= self.mask_id < vocab_size:
                raise ValueError(f"--mask-token-id {self.mask_id} is outside the model's vocabulary "
                                 f"[0, {vocab_size}): pass the mask id the model was trained with")
            if self.eos_id is not None and not 0 <= self.eos_id < vocab_size:
                raise ValueError(f"--eos-id {self.eos_id} is outside the model's vocabulary [0, {vocab_size}): "
                                 "pass the tokenizer's end-of-document id (or leave --eos-id out)")
        if self.clean_stream not in CLEAN_STREAMS:
            raise ValueError(f"clean stream must be one of {CLEAN_STREAMS}, got {self.clean_stream!r}")


@dataclass
class DecodeResult:
    tokens: List[int]               # generated ids (up to and excluding EOS)
    num_forward_passes: int         # decoding forwards (each accepts >= 1 token)
    num_cache_passes: int = 0       # forwards that only write the KV cache (prefill / commit)
    seconds: float = 0.0
    stopped_at_eos: bool = False
    per_step_accepted: List[int] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> float:
        """Tokens decoded per decoding forward (the parallelism the threshold bought)."""
        return sum(self.per_step_accepted) / max(self.num_forward_passes, 1)

    @property
    def model_calls(self) -> int:
        """Every forward of the model: decoding steps and cache-only passes."""
        return self.num_forward_passes + self.num_cache_passes


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
    """logits [n, V] -> (tokens [n], confidence [n] = probability of the chosen token).

    The mask id is never sampled: its logit is -inf, so probabilities are renormalised over the
    other tokens (a predicted mask would leave the slot masked, and the output with a hole).
    """
    logits = logits.float()
    if 0 <= cfg.mask_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., cfg.mask_id] = float("-inf")
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


class _Runner:
    """Model calls of one decoding: full prefix without a cache, else only the uncached rows."""

    def __init__(self, forward, x, cfg, total, padded, cache, device):
        self.forward, self.x, self.cfg, self.cache, self.device = forward, x, cfg, cache, device
        self.total = total
        self.positions = decode_positions(padded, total, device=device)[None]
        self.committed = 0          # tokens whose keys / values are in the cache
        self.carry = None           # output row of the last committed token (token shift)
        self.mask = None
        self.start = 0              # first row of the last call

    def set_block(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.mask = decode_mask(lo, hi, self.total, self.cfg.block_length, self.cfg.clean_stream,
                                device=self.device)

    def call(self, end: int) -> torch.Tensor:
        """Rows [c, end) -> outputs [end - c, V]; with a cache c = committed, and rows up to the
        block start are written to it."""
        if not self.cfg.use_cache:
            self.start = 0
            out = self.forward(self.x[:, :end], self.positions[:, :end], self.mask[:end, :end])[0]
            if self.lo > 0:
                self.carry = out[self.lo - 1]
            return out
        c = self.start = self.committed
        self.cache.commit_tokens = self.lo - c
        try:
            out = self.forward(self.x[:, c:end], self.positions[:, c:end], self.mask[c:end, :end])[0]
        finally:
            self.cache.commit_tokens = 0
        if self.lo > c:
            self.carry = out[self.lo - 1 - c]
            self.committed = self.lo
        return out

    def slot_logits(self, out: torch.Tensor) -> torch.Tensor:
        """[LB, V]: the output row predicting each slot of the current block."""
        lo, hi, c = self.lo, self.hi, self.start
        own = out[lo - c:hi - c]
        if not self.cfg.token_shift:
            return own
        first = self.carry if lo > 0 else own[0]  # slot 0 is a prompt token: never predicted
        return torch.cat([first[None], own[:-1]], dim=0)


def decode(prompt: List[int], forward: Callable, cfg: DecodeConfig, *, device="cpu",
           cache: Optional[DecodeCache] = None) -> DecodeResult:
    """Generate after ``prompt`` (a list of ids). ``cache`` must be attached to the model when
    ``cfg.use_cache`` (``megatron_dllm.generate.kv_cache.attach``)."""
    cfg.validate()
    if cfg.use_cache and cache is None:
        raise ValueError("use_cache needs a DecodeCache attached to the model")
    if cfg.token_shift and not prompt:
        raise ValueError("token-shift decoding needs a non-empty prompt (position 0 is never predicted)")
    start = time.perf_counter()
    LB, P = cfg.block_length, len(prompt)
    total = P + cfg.gen_length
    padded = -(-total // LB) * LB
    x = torch.full((1, padded), cfg.mask_id, dtype=torch.long, device=device)
    x[0, :P] = torch.tensor(prompt, dtype=torch.long, device=device)
    steps = cfg.effective_steps
    quotas = step_quotas(LB, steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    result = DecodeResult(tokens=[], num_forward_passes=0)
    runner = _Runner(forward, x, cfg, total, padded, cache, device)
    stop = False
    for block in range(P // LB, padded // LB):
        lo, hi = block * LB, (block + 1) * LB
        runner.set_block(lo, hi)
        if cfg.use_cache and not cfg.fuse_commit and runner.committed < lo:
            runner.call(lo)  # prefill / commit on its own
            result.num_cache_passes += 1
        for step in range(steps):
            still = x[0, lo:hi] == cfg.mask_id
            still[: max(0, P - lo)] = False  # prompt tokens of a partial block
            still[max(0, total - lo):] = False  # padding after the end
            if not bool(still.any()):
                break
            logits = runner.slot_logits(runner.call(hi))       # [LB, V]
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
        if cfg.eos_id is not None and bool((x[0, P:hi] == cfg.eos_id).any()):
            break
    out = x[0, P:P + cfg.gen_length].tolist()
    if cfg.eos_id is not None and cfg.eos_id in out:
        out = out[: out.index(cfg.eos_id)]
        result.stopped_at_eos = True
    result.tokens = out
    result.seconds = time.perf_counter() - start
    return result


def block_logits(x: torch.Tensor, lo: int, total: int, forward: Callable, cfg: DecodeConfig, *,
                 cache: Optional[DecodeCache] = None) -> torch.Tensor:
    """[LB, V]: the logits one decoding step uses for the slots of block ``[lo, lo + LB)`` of
    ``x [1, padded]`` (everything before ``lo`` committed), from an empty cache: what training's
    ``[xt ; x0]`` layout computes for a noisy block whose earlier blocks are clean."""
    if cfg.use_cache and cache is None:
        raise ValueError("use_cache needs a DecodeCache attached to the model")
    runner = _Runner(forward, x, cfg, total, x.shape[1], cache, x.device)
    runner.set_block(lo, lo + cfg.block_length)
    return runner.slot_logits(runner.call(lo + cfg.block_length))
