"""SFT complementary instances (diffusion/sft.py) against per-token brute-force definitions."""

import pytest
import torch

from megatron_dllm.diffusion import losses as LO
from megatron_dllm.diffusion import noising as N
from megatron_dllm.diffusion.sft import complementary_instances

MASK = 99
B, L = 4, 16
BAND = N.NoiseConfig(t_low=0.3, t_high=0.8)


def batch():
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 50, (B, L), generator=g)
    prompt_len = [3, 5, 8, 15]
    loss_mask = torch.zeros(B, L, dtype=torch.bool)
    for b, p in enumerate(prompt_len):
        loss_mask[b, p:] = True
    return x0, loss_mask


def make(cfg=BAND, iteration=3, indices=(10, 11, 12, 13), block_size=None):
    x0, lm = batch()
    return x0, lm, complementary_instances(x0, lm, list(indices), seed=5, iteration=iteration, cfg=cfg,
                                           mask_token_id=MASK, block_size=block_size)


def test_prompt_never_masked_and_each_response_token_masked_exactly_once():
    x0, lm, out = make()
    assert out.xt.shape == (2 * B, L)
    for b in range(B):
        for i in range(L):
            first, second = bool(out.noise_mask[b, i]), bool(out.noise_mask[B + b, i])
            if lm[b, i]:
                assert first + second == 1, (b, i)
            else:
                assert not first and not second, (b, i)
            for r, masked in ((b, first), (B + b, second)):
                assert int(out.xt[r, i]) == (MASK if masked else int(x0[b, i]))
                assert int(out.tokens[r, i]) == int(x0[b, i])
                assert bool(out.loss_mask[r, i]) == bool(lm[b, i])


def test_first_instance_is_apply_noise_per_sample_and_second_has_one_minus_t():
    x0, lm, out = make()
    ref = N.apply_noise_per_sample(x0, [10, 11, 12, 13], 5, 3, BAND, MASK, loss_mask=lm)
    assert torch.equal(out.xt[:B], ref.xt)
    assert torch.equal(out.noise_mask[:B], ref.noise_mask)
    assert torch.equal(out.t_per_token[:B], ref.t_per_token)
    assert torch.equal(out.t_per_token[B:], 1.0 - ref.t_per_token)
    assert bool(((ref.t_per_token >= 0.3) & (ref.t_per_token <= 0.8)).all())


def test_deterministic_per_seed_index_iteration_and_independent_of_batch_composition():
    _, _, a = make()
    _, _, b = make()
    assert torch.equal(a.xt, b.xt) and torch.equal(a.t_per_token, b.t_per_token)
    _, _, c = make(iteration=4)
    assert not torch.equal(a.xt, c.xt)
    # row 0 alone with the same index draws the same noise as inside the batch
    x0, lm = batch()
    solo = complementary_instances(x0[:1], lm[:1], [10], 5, 3, BAND, MASK)
    assert torch.equal(solo.xt[0], a.xt[0]) and torch.equal(solo.xt[1], a.xt[B])


def test_block_granularity_keeps_the_complement_property():
    cfg = N.NoiseConfig(t_low=0.3, t_high=0.8, granularity="block")
    x0, lm, out = make(cfg=cfg, block_size=4)
    assert torch.equal(out.noise_mask[:B] ^ out.noise_mask[B:], lm)
    assert torch.equal(out.t_per_token[:B] + out.t_per_token[B:], torch.ones(B, L))
    t_first = out.t_per_token[:B].view(B, L // 4, 4)
    assert torch.equal(t_first, t_first[:, :, :1].expand(B, L // 4, 4))


def brute_force_sft_loss(ce, out, weighting, normalization):
    total, rows = 0.0, []
    for r in range(2 * B):
        row = 0.0
        for i in range(L):
            if out.noise_mask[r, i] and out.loss_mask[r, i]:
                w = 1.0 / float(out.t_per_token[r, i]) if weighting == "inv_t" else 1.0
                row += w * float(ce[r, i])
        rows.append(row)
        total += row
    if normalization == "all_tokens":
        return total / int(out.loss_mask.sum())
    if normalization == "masked_tokens":
        return total / int((out.noise_mask & out.loss_mask).sum())
    per_row = [rows[r] / int(out.loss_mask[r].sum()) for r in range(2 * B)]
    return sum(per_row) / (2 * B)


@pytest.mark.parametrize("weighting", ["inv_t", "none"])
@pytest.mark.parametrize("normalization", ["all_tokens", "masked_tokens", "sequence"])
def test_sft_loss_over_both_instances_equals_brute_force(weighting, normalization):
    _, lm, out = make()
    ce = torch.rand(2 * B, L, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5
    got = LO.diffusion_loss(ce, out.noise_mask, out.t_per_token, out.loss_mask, weighting=weighting,
                            normalization=normalization).mean()
    want = brute_force_sft_loss(ce, out, weighting, normalization)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # every response token is supervised once per pair
    num_noised = LO.diffusion_loss(ce, out.noise_mask, out.t_per_token, out.loss_mask).num_noised
    assert int(num_noised) == int(lm.sum())


def test_bad_input_errors():
    x0, lm = batch()
    with pytest.raises(ValueError, match=r"loss_mask must be \[B, L\] = \(4, 16\) like x0 \(it keeps the "
                                         r"prompt unmasked\), got None"):
        complementary_instances(x0, None, [0, 1, 2, 3], 0, 0, BAND, MASK)
    with pytest.raises(ValueError, match=r"got \(4, 15\)"):
        complementary_instances(x0, lm[:, :15], [0, 1, 2, 3], 0, 0, BAND, MASK)
    with pytest.raises(ValueError, match=r"x0 must be \[B, L\], got shape \(16,\)"):
        complementary_instances(x0[0], lm[0], [0], 0, 0, BAND, MASK)
    with pytest.raises(ValueError, match="3 sample indices for 4 rows"):
        complementary_instances(x0, lm, [0, 1, 2], 0, 0, BAND, MASK)
