"""Token-shift and causal-clean-stream decoding against their brute-force definitions (the official
rule re-run on the whole prefix every step, ``test_decoding_parity.official_generate``), with and
without the KV cache, committed blocks fused into the next step or not."""

import random

import pytest

from megatron_dllm.generate.decoding import DecodeConfig, decode
from megatron_dllm.generate.kv_cache import DecodeCache
from tests.unit.decoding_toy import ToyModel, one_thread  # noqa: F401 (autouse fixture)
from tests.unit.test_decoding_parity import EOS, MASK, VOCAB, _case, official_generate, rng_scale


def _run(case, use_cache, fuse, token_shift, clean_stream):
    model = ToyModel(VOCAB, case["seed"], scale=rng_scale(case["seed"]))
    cache = DecodeCache() if use_cache else None
    model.cache = cache
    cfg = DecodeConfig(mask_id=MASK, gen_length=case["gen_length"], block_length=case["block_length"],
                       steps=case["steps"], threshold=case["threshold"], eos_id=case["eos_id"],
                       eos_early_stop=case["eos_early_stop"], minimal_topk=case["minimal_topk"],
                       use_cache=use_cache, fuse_commit=fuse, token_shift=token_shift,
                       clean_stream=clean_stream)
    out = decode(case["prompt"], model, cfg, cache=cache)
    assert out.model_calls == model.calls
    return out


@pytest.mark.parametrize("token_shift,clean_stream", [(True, "block_causal"), (False, "causal"),
                                                      (True, "causal")])
def test_variants_equal_their_brute_force_definition(token_shift, clean_stream):
    rng = random.Random(f"{token_shift}-{clean_stream}")
    differs_from_default = 0
    for _ in range(60):
        case = _case(rng)
        model = ToyModel(VOCAB, case["seed"], scale=rng_scale(case["seed"]))
        keys = ("gen_length", "block_length", "steps", "threshold", "minimal_topk", "eos_id", "eos_early_stop")
        expected, _ = official_generate(model, case["prompt"], mask_id=MASK, token_shift=token_shift,
                                        clean_stream=clean_stream, **{k: case[k] for k in keys})
        default, _ = official_generate(model, case["prompt"], mask_id=MASK, **{k: case[k] for k in keys})
        differs_from_default += expected != default
        for use_cache, fuse in ((False, True), (True, True), (True, False)):
            assert _run(case, use_cache, fuse, token_shift, clean_stream).tokens == expected, (case, use_cache)
    assert differs_from_default >= 5       # the variant matters on these cases


def test_token_shift_reads_the_previous_row():
    """A model whose row i predicts token (position i + 1) % 10 with certainty: under the shift the
    slot at i is predicted by row i - 1, so it gets i % 10, across block starts (the committed row)."""
    import torch

    def forward(tokens, positions, mask):
        logits = torch.full((1, tokens.shape[1], VOCAB), -30.0)
        logits[0, torch.arange(tokens.shape[1]), (positions[0] + 1) % 10] = 0.0
        return logits

    for use_cache in (True, False):
        for prompt in ([7], [7, 7, 7, 7], [7, 7, 7, 7, 7, 7]):
            cfg = DecodeConfig(mask_id=MASK, gen_length=9, block_length=4, steps=4, threshold=0.5,
                               token_shift=True, use_cache=use_cache, eos_id=EOS)
            out = decode(prompt, forward, cfg, cache=DecodeCache() if use_cache else None)
            P = len(prompt)
            assert out.tokens == [i % 10 for i in range(P, P + 9)]


def test_token_shift_needs_a_prompt():
    with pytest.raises(ValueError, match="token-shift decoding needs a non-empty prompt"):
        decode([], ToyModel(VOCAB, 0), DecodeConfig(mask_id=MASK, token_shift=True, use_cache=False))
