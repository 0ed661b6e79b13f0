"""Our decoder against the official LLaDA2.0 ``generate`` rule, re-implemented here from its
description (FINDINGS.md section 2, METHOD.md section 10) with our documented differences put in:
hidden slots past prompt + gen_length, the mask id never sampled, greedy argmax at temperature 0,
EOS not returned. Random cases on a deterministic toy model; with and without the KV cache, with the
finished blocks committed in their own forward or fused into the next block's first step.
"""

import random

import pytest
import torch

from megatron_dllm.generate.decoding import DecodeConfig, decode
from megatron_dllm.generate.kv_cache import DecodeCache
from tests.unit.decoding_toy import ToyModel, one_thread  # noqa: F401 (autouse fixture)

VOCAB, EOS, MASK = 12, 10, 11


def official_generate(model, prompt, *, gen_length, block_length, steps, threshold, minimal_topk,
                      eos_id, eos_early_stop, mask_id, token_shift=False, clean_stream="block_causal"):
    """The official rule; returns (generated tokens before the first EOS, forwards).

    Brute force, no cache: every step runs the whole prefix. The variants by their definitions:
    ``token_shift`` reads the slot at i from output row i - 1 of that forward; ``clean_stream``
    "causal" lets the rows before the current block attend causally (key <= query) instead of
    block-causally, while the current block's rows see every earlier row and their own block.
    """
    steps = min(steps, gen_length // minimal_topk)                 # the step cap
    base, rest = divmod(block_length, steps)
    schedule = [base + (1 if s < rest else 0) for s in range(steps)]
    P = len(prompt)
    total = P + gen_length
    num_blocks = -(-total // block_length)
    length = num_blocks * block_length
    x = torch.tensor(prompt + [mask_id] * (length - P))
    forwards = 0
    for block in range(P // block_length, num_blocks):
        end = (block + 1) * block_length
        allowed = torch.zeros(end, end, dtype=torch.bool)
        for i in range(end):
            for j in range(end):
                if i >= total:
                    allowed[i, j] = i == j                           # ours: hidden padding
                elif i < end - block_length and clean_stream == "causal":
                    allowed[i, j] = j <= i
                else:
                    allowed[i, j] = j // block_length <= i // block_length and j < total
        for step in range(steps):
            window = x[end - block_length:end]
            active = window == mask_id
            active[torch.arange(end - block_length, end) >= total] = False  # ours: never decoded
            if not active.any():
                break
            logits = model(x[None, :end], torch.arange(end)[None], allowed)[0]
            rows = torch.arange(end - block_length, end)
            logits = logits[(rows - 1).clamp(min=0) if token_shift else rows]
            forwards += 1
            logits = logits.clone()
            logits[:, mask_id] = float("-inf")                    # ours: the mask id is never sampled
            probs = logits.softmax(-1)
            p, x0 = probs.max(-1)                                  # ours: greedy at temperature 0
            confidence = torch.where(active, p, torch.full_like(p, float("-inf")))
            high = confidence > threshold
            transfer = torch.zeros_like(high)
            if int(high.sum()) >= schedule[step]:
                transfer = high
            else:
                idx = torch.topk(confidence, min(schedule[step], int(active.sum()))).indices
                transfer[idx] = True
            window[transfer] = x0[transfer]
            if eos_early_stop and eos_id is not None and (x0[transfer] == eos_id).any():
                eos_at = (x == eos_id).nonzero()
                if len(eos_at):
                    first = int(eos_at[0])
                    if (x[P:first] != mask_id).all():
                        return x[P:first].tolist(), forwards      # official: returns prompt + EOS too
        if eos_id is not None and (x[P:end] == eos_id).any():
            break
    out = x[P:total].tolist()
    if eos_id in out:
        out = out[:out.index(eos_id)]                              # official: keeps the EOS
    return out, forwards


def _case(rng):
    block = rng.choice([1, 2, 3, 4, 8])
    gen_length = rng.randint(1, 20)
    return dict(prompt=[rng.randrange(10) for _ in range(rng.randint(1, 19))], gen_length=gen_length,
                block_length=block, steps=rng.randint(1, block),
                threshold=rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0]),
                minimal_topk=rng.randint(1, min(3, gen_length)), eos_id=rng.choice([EOS, None]),
                eos_early_stop=rng.random() < 0.5, seed=rng.randrange(1000))


def _ours(case, use_cache, fuse):
    model = ToyModel(VOCAB, case["seed"], scale=rng_scale(case["seed"]))
    cache = DecodeCache() if use_cache else None
    model.cache = cache
    cfg = DecodeConfig(mask_id=MASK, gen_length=case["gen_length"], block_length=case["block_length"],
                       steps=case["steps"], threshold=case["threshold"], eos_id=case["eos_id"],
                       eos_early_stop=case["eos_early_stop"], minimal_topk=case["minimal_topk"],
                       use_cache=use_cache, fuse_commit=fuse)
    out = decode(case["prompt"], model, cfg, cache=cache)
    assert out.model_calls == model.calls
    return out


def rng_scale(seed):
    return 1.0 + (seed % 7)  # peaked and flat models alike


def test_random_cases_equal_the_official_rule():
    rng = random.Random(12)
    for _ in range(150):
        case = _case(rng)
        model = ToyModel(VOCAB, case["seed"], scale=rng_scale(case["seed"]))
        expected, ref_forwards = official_generate(
            model, case["prompt"], mask_id=MASK,
            **{k: case[k] for k in ("gen_length", "block_length", "steps", "threshold", "minimal_topk",
                                    "eos_id", "eos_early_stop")})
        for use_cache, fuse in ((False, True), (True, True), (True, False)):
            out = _ours(case, use_cache, fuse)
            assert out.tokens == expected, (case, use_cache, fuse)
            # same steps; ours may stop earlier once everything before an EOS is decoded
            if case["eos_id"] is None or not case["eos_early_stop"]:
                assert out.num_forward_passes == ref_forwards, case
            else:
                assert out.num_forward_passes <= ref_forwards, case
            assert out.num_cache_passes == (0 if fuse or not use_cache else out.num_cache_passes)


def test_fused_commits_save_every_cache_forward():
    rng = random.Random(3)
    saved = 0
    for _ in range(40):
        case = _case(rng)
        fused, separate = _ours(case, True, True), _ours(case, True, False)
        assert fused.tokens == separate.tokens
        assert fused.num_cache_passes == 0
        assert fused.num_forward_passes == separate.num_forward_passes
        # one cache forward per block entered after the first and for the prompt's whole blocks
        saved += separate.num_cache_passes
    assert saved > 40


def test_step_cap_sets_the_quota():
    cfg = DecodeConfig(mask_id=MASK, gen_length=4, block_length=8, steps=8)
    assert cfg.effective_steps == 4                                 # min(8, 4 // 1)
    assert DecodeConfig(mask_id=MASK, gen_length=4, block_length=8, steps=8, minimal_topk=2).effective_steps == 2
    assert DecodeConfig(mask_id=MASK, gen_length=4, block_length=8, steps=8, minimal_topk=0).effective_steps == 8
    # threshold 1 accepts nothing above it: each step takes its quota of 2
    model = ToyModel(VOCAB, 1)
    out = decode([1, 2, 3, 4, 5, 6, 7, 8], model, DecodeConfig(mask_id=MASK, gen_length=4, block_length=8,
                                                               steps=8, threshold=1.0, use_cache=False))
    assert out.per_step_accepted == [2, 2] and len(out.tokens) == 4
    with pytest.raises(ValueError, match="--minimal-topk 5 exceeds --gen-length 4"):
        DecodeConfig(mask_id=MASK, gen_length=4, minimal_topk=5).validate()
    with pytest.raises(ValueError, match="--steps must be in"):
        DecodeConfig(mask_id=MASK, steps=0).validate()


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_model_that_predicts_the_mask_id_still_fills_every_slot(use_cache):
    def forward(tokens, positions, mask):
        logits = torch.zeros(1, tokens.shape[1], VOCAB)
        logits[..., MASK] = 50.0                       # the mask id is by far the most likely
        logits[..., 3] = 1.0
        return logits

    cfg = DecodeConfig(mask_id=MASK, gen_length=9, block_length=4, steps=4, threshold=0.9, use_cache=use_cache)
    cache = DecodeCache() if use_cache else None
    out = decode([1, 2], forward, cfg, cache=cache)
    assert out.tokens == [3] * 9                       # never cut, never a mask id
