"""Acceptance rules of block-wise threshold decoding (pure functions)."""

import pytest
import torch

from megatron_dllm.generate.decoding import DecodeConfig, _filter_logits, accept, sample, step_quotas


def test_step_quotas_split_the_block_evenly():
    assert step_quotas(32, 32) == [1] * 32
    assert step_quotas(8, 3) == [3, 3, 2]
    assert sum(step_quotas(37, 5)) == 37


def test_accept_takes_all_above_threshold_else_the_most_confident():
    conf = torch.tensor([0.99, 0.2, 0.97, 0.5, 0.1])
    masked = torch.tensor([True, True, True, True, False])
    assert accept(conf, masked, 0.95, 1).tolist() == [True, False, True, False, False]
    assert accept(conf, masked, 0.999, 2).tolist() == [True, False, True, False, False]
    assert accept(conf, masked, 0.999, 1).tolist() == [True, False, False, False, False]
    # never picks an unmasked slot, even when the quota exceeds what is left
    assert accept(conf, torch.tensor([False, True, False, False, False]), 0.999, 3).tolist() == [
        False, True, False, False, False]


def test_greedy_sample_is_argmax_with_its_probability():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    tokens, conf = sample(logits, DecodeConfig(mask_id=9), torch.Generator())
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(conf, logits.softmax(-1).max(-1).values)


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(_filter_logits(logits, 2, None)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, None, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, None, 0.85)).tolist() == [[False, False, False, True]]
    gen = torch.Generator().manual_seed(0)
    cfg = DecodeConfig(mask_id=9, temperature=1.0, top_k=1)
    tokens, conf = sample(logits.repeat(20, 1), cfg, gen)
    assert tokens.tolist() == [0] * 20 and torch.allclose(conf, torch.ones(20))


def _recording_forward(vocab, seen):
    """A stand-in model: predicts (position + 1) mod vocab with certainty; records each call."""

    def forward(tokens, positions, mask):
        seen.append((positions[0].tolist(), mask.clone()))
        logits = torch.full((1, tokens.shape[1], vocab), -1e4)
        logits[0, torch.arange(tokens.shape[1]), (positions[0] + 1) % vocab] = 0.0
        return logits

    return forward


@pytest.mark.parametrize("use_cache", [True, False])
def test_slots_after_the_end_are_never_attended(use_cache):
    from megatron_dllm.generate.decoding import decode
    from megatron_dllm.generate.kv_cache import DecodeCache

    seen = []
    prompt, gen = [5, 6, 7, 8, 9], 6               # ends at 11: the second block of 8 is partial
    cfg = DecodeConfig(mask_id=99, gen_length=gen, block_length=8, steps=8, threshold=0.5,
                       use_cache=use_cache)
    out = decode(prompt, _recording_forward(100, seen), cfg, cache=DecodeCache() if use_cache else None)
    assert out.tokens == [(p + 1) % 100 for p in range(5, 11)]
    total = len(prompt) + gen
    for positions, mask in seen:
        assert len(positions) % 8 == 0                          # whole blocks
        keys = mask.shape[1]
        assert max(positions) < total                           # hidden slots reuse position total - 1
        for row in range(len(positions)):
            index = keys - len(positions) + row                 # absolute slot (after the cached keys)
            if index < total:
                assert positions[row] == index
                assert not mask[row, total:].any()              # real slots never see padding
                expected = torch.arange(keys) < min((index // 8 + 1) * 8, total)
                assert torch.equal(mask[row], expected)         # block-causal up to the end
            else:
                assert torch.equal(mask[row], torch.arange(keys) == index)  # padding sees itself
