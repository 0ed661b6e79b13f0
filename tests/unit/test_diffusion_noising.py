"""Noising: t samplers, the forward process, complementary pairs, per-sample deterministic noise."""

import math

import pytest
import torch

from megatron_dllm.diffusion import noising as N
from megatron_dllm.diffusion import seeding as S
from megatron_dllm.diffusion.noising import NoiseConfig

MASK = 99


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- seeds ----


def test_splitmix64_reference_vector():
    # First outputs of the reference SplitMix64 generator seeded with 0 (state += golden gamma each step).
    state, outs = 0, []
    for _ in range(3):
        outs.append(S._splitmix64(state))
        state = (state + 0x9E3779B97F4A7C15) % 2**64
    assert outs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_mix_seed_is_pinned_and_spreads():
    # pinned: changing these changes every run's noise (DESIGN.md decision 7)
    s = S._splitmix64
    expected = s(s(s(s(0) ^ 1) ^ 2) ^ 3) >> 1
    assert S.mix_seed(1, 2, 3) == expected == 735100177291612810
    assert S.mix_seed(1234, 10**9, 77, stream=S.STREAM_GROUP) == 1596679867097520411
    assert S.mix_seed(1, 2, 3) < 2**63
    seeds = {S.mix_seed(a, b, c) for a in range(4) for b in range(8) for c in range(8)}
    assert len(seeds) == 4 * 8 * 8
    assert S.mix_seed(1, 2, 3) != S.mix_seed(1, 3, 2)
    assert S.mix_seed(1, 2, 3, stream=S.STREAM_GROUP) != S.mix_seed(1, 2, 3)
    g1, g2 = S.noise_generator(1, 2, 3), S.noise_generator(1, 2, 3)
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))


def test_mix_seed_rejects_negative():
    message = r"mix_seed: sample_index must be an integer in \[0, 2\*\*64\), got -1"
    with pytest.raises(ValueError, match=message):
        S.mix_seed(0, -1, 0)


# ---- config ----


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=0.0), r"NoiseConfig.eps must be in \(0, 1\), got 0.0"),
    (dict(t_low=0.3), r"give both t_low and t_high"),
    (dict(t_low=0.8, t_high=0.3), r"0 < t_low <= t_high <= 1, got \[0.8, 0.3\]"),
    (dict(sampling="sobol"), r"NoiseConfig.sampling must be one of"),
    (dict(granularity="token"), r"NoiseConfig.granularity must be one of"),
    (dict(num_strata=0), r"num_strata must be >= 1"),
])
def test_noise_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseConfig(**kwargs)


# ---- sample_t ----


@pytest.mark.parametrize("sampling", N.SAMPLINGS)
def test_sample_t_range_and_shape(sampling):
    cfg = NoiseConfig(sampling=sampling)
    t = N.sample_t(64, 1, cfg, gen())
    assert t.shape == (64,) and t.dtype == torch.float32
    assert (t >= cfg.eps).all() and (t <= 1).all()
    band = NoiseConfig(t_low=0.3, t_high=0.8, sampling=sampling, granularity="block")
    tb = N.sample_t(8, 4, band, gen())
    assert tb.shape == (8, 4)
    assert (tb >= 0.3).all() and (tb <= 0.8).all()


def circular_offsets(u, index, n):
    """d_i = (n * u_i - index_i) mod n: where draw i sits relative to its own stratum."""
    return torch.remainder(n * u.double() - index.double(), n)


def circular_spread(d, n):
    """Length of the shortest arc of the circle [0, n) that holds every point of d."""
    s = d.flatten().sort().values
    gaps = torch.cat([s[1:] - s[:-1], (s[:1] + n - s[-1:])])
    return n - gaps.max().item()


def test_sample_t_antithetic_one_draw_per_stratum():
    cfg = NoiseConfig(sampling="antithetic", granularity="block")
    B, K = 6, 3
    t = N.sample_t(B, K, cfg, gen(3))
    u = (t.double() - cfg.eps) / (1 - cfg.eps)
    # draw (b, k) has index k * B + b and sits in stratum (index + r) mod N at jitter v: all offsets
    # (r + v) lie within one stratum width of each other, and every stratum holds one draw
    d = circular_offsets(u, torch.arange(B * K).view(K, B).t(), B * K)
    assert circular_spread(d, B * K) < 1.0
    assert torch.equal(torch.floor(u * B * K).flatten().sort().values, torch.arange(B * K).double())


def test_sample_t_stratified_is_evenly_spaced():
    cfg = NoiseConfig(sampling="stratified")
    n = 10
    t = N.sample_t(n, 1, cfg, gen(4)).double()
    u = (t - cfg.eps) / (1 - cfg.eps)
    d = circular_offsets(u, torch.arange(n), n)
    assert circular_spread(d, n) < 1e-5    # one shared offset
    gaps = u.sort().values.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / n), rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampling", ["antithetic", "stratified"])
def test_sample_t_every_draw_is_marginally_uniform(sampling):
    # the rotation makes the t of a fixed batch position uniform (MDLM's unrotated scheme would put
    # row 0 always in the lowest stratum)
    cfg = NoiseConfig(sampling=sampling, granularity="block")
    g = gen(5)
    n = 3000
    u = torch.stack([N.sample_t(4, 2, cfg, g)[0, 1] for _ in range(n)]).double()
    u = ((u - cfg.eps) / (1 - cfg.eps)).sort().values
    ks = (torch.arange(1, n + 1, dtype=torch.float64) / n - u).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)   # 1 % critical value of the KS statistic


def test_sample_t_granularity_mismatch():
    with pytest.raises(ValueError, match="granularity 'sequence' needs num_blocks == 1, got 4"):
        N.sample_t(2, 4, NoiseConfig(), gen())


# ---- forward process ----


def test_apply_noise_definition_and_rate():
    B, L = 64, 128
    x0 = torch.randint(0, 50, (B, L), generator=gen(1))
    loss_mask = torch.rand(B, L, generator=gen(2)) < 0.7
    t = torch.linspace(0.05, 1.0, B)
    res = N.apply_noise(x0, t, MASK, loss_mask, gen(5))
    assert torch.equal(res.xt, torch.where(res.noise_mask, torch.full_like(x0, MASK), x0))
    assert not (res.noise_mask & ~loss_mask).any()           # only maskable positions
    assert torch.equal(res.t_per_token, t[:, None].expand(B, L))
    assert res.noise_mask[-1][loss_mask[-1]].all()           # t = 1 masks every maskable token
    # empirical mask rate among maskable tokens matches t within 4 binomial standard deviations
    n = loss_mask.sum().double()
    expected = (t[:, None] * loss_mask).sum().double()
    sd = ((t[:, None] * (1 - t[:, None])) * loss_mask).sum().double().sqrt()
    assert abs(res.noise_mask.sum().double() - expected) < 4 * sd, (n, expected)


def test_apply_noise_per_block_t():
    B, L, bs = 3, 12, 4
    x0 = torch.randint(0, 50, (B, L), generator=gen(1))
    t = torch.tensor([[1.0, 0.001, 0.5]] * B)
    res = N.apply_noise(x0, t, MASK, None, gen(2), block_size=bs)
    assert torch.equal(res.t_per_token, t.repeat_interleave(bs, dim=1))
    assert res.noise_mask[:, :4].all()
    with pytest.raises(ValueError, match=r"pass block_size with K \* block_size == L = 12"):
        N.apply_noise(x0, t, MASK, None, gen(2), block_size=3)


def test_same_generator_same_noise_and_no_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    x0 = torch.randint(0, 50, (4, 16), generator=gen(1))
    cfg = NoiseConfig(sampling="antithetic")
    a = N.apply_noise(x0, N.sample_t(4, 1, cfg, gen(7)), MASK, None, gen(8))
    b = N.apply_noise(x0, N.sample_t(4, 1, cfg, gen(7)), MASK, None, gen(8))
    c = N.apply_noise(x0, N.sample_t(4, 1, cfg, gen(7)), MASK, None, gen(9))
    N.apply_noise_per_sample(x0, [0, 1, 2, 3], 1, 2, NoiseConfig(sampling="stratified", num_strata=4), MASK)
    N.complementary_pair(x0, torch.full((4,), 0.5), MASK, None, gen(1))
    assert torch.equal(a.noise_mask, b.noise_mask)
    assert not torch.equal(a.noise_mask, c.noise_mask)
    assert torch.equal(torch.get_rng_state(), state)   # the global RNG was never used


def test_complementary_pair():
    B, L = 4, 32
    x0 = torch.randint(0, 50, (B, L), generator=gen(1))
    loss_mask = torch.ones(B, L, dtype=torch.bool)
    loss_mask[:, :5] = False  # prompt
    t = torch.tensor([0.2, 0.5, 0.9, 1.0])
    first, second = N.complementary_pair(x0, t, MASK, loss_mask, gen(3))
    assert not (first.noise_mask & second.noise_mask).any()
    assert torch.equal(first.noise_mask | second.noise_mask, loss_mask)
    assert torch.equal(second.t_per_token, 1 - first.t_per_token)
    assert torch.equal(second.xt, torch.where(second.noise_mask, torch.full_like(x0, MASK), x0))
    assert not second.noise_mask[3].any()  # t = 1: the complement is clean


# ---- per-sample noise ----


@pytest.mark.parametrize("sampling", N.SAMPLINGS)
@pytest.mark.parametrize("granularity", N.GRANULARITIES)
def test_per_sample_noise_independent_of_micro_batching(sampling, granularity):
    gbs, L, bs = 8, 16, 4
    cfg = NoiseConfig(sampling=sampling, granularity=granularity, num_strata=gbs)
    x0 = torch.randint(0, 50, (gbs, L), generator=gen(1))
    loss_mask = torch.rand(gbs, L, generator=gen(2)) < 0.8
    it = 5
    idx = list(range(it * gbs, (it + 1) * gbs))
    full = N.apply_noise_per_sample(x0, idx, 42, it, cfg, MASK, loss_mask, bs)
    # two micro-batches of 4, and a shuffled one, must reproduce the same rows
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7], [6, 1, 3]):
        part = N.apply_noise_per_sample(x0[rows], torch.tensor([idx[r] for r in rows]), 42, it, cfg,
                                        MASK, loss_mask[rows], bs)
        assert torch.equal(part.noise_mask, full.noise_mask[rows])
        assert torch.equal(part.t_per_token, full.t_per_token[rows])
    other_iter = N.apply_noise_per_sample(x0, idx, 42, it + 1, cfg, MASK, loss_mask, bs)
    assert not torch.equal(other_iter.t_per_token, full.t_per_token)
    lo, hi = cfg.bounds
    assert (full.t_per_token >= lo).all() and (full.t_per_token <= hi).all()


@pytest.mark.parametrize("sampling", ["antithetic", "stratified"])
def test_per_sample_strata_cover_the_group(sampling):
    n, K, L = 6, 2, 8
    cfg = NoiseConfig(sampling=sampling, granularity="block", num_strata=n)
    x0 = torch.zeros(n, L, dtype=torch.long)
    group = 3
    # the group's samples, given in a scrambled order: sample j = index mod n owns index k * n + j
    order = [4, 0, 5, 2, 1, 3]
    res = N.apply_noise_per_sample(x0, [group * n + j for j in order], 0, 7, cfg, MASK, None, L // K)
    t = res.t_per_token[:, :: L // K]  # [n, K]
    u = (t.double() - cfg.eps) / (1 - cfg.eps)
    index = torch.arange(K)[None, :] * n + torch.tensor(order)[:, None]
    d = circular_offsets(u, index, n * K)
    assert circular_spread(d, n * K) < (1.0 if sampling == "antithetic" else 1e-5)
    assert torch.equal(torch.floor(u * n * K).flatten().sort().values, torch.arange(n * K).double())


def test_per_sample_errors():
    x0 = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"num_strata must be set \(to the global batch size\)"):
        N.apply_noise_per_sample(x0, [0, 1], 0, 0, NoiseConfig(sampling="antithetic"), MASK)
    with pytest.raises(ValueError, match="3 sample indices for 2 rows"):
        N.apply_noise_per_sample(x0, [0, 1, 2], 0, 0, NoiseConfig(), MASK)
    with pytest.raises(ValueError, match="block granularity needs a block_size dividing L = 8, got 3"):
        N.apply_noise_per_sample(x0, [0, 1], 0, 0, NoiseConfig(granularity="block"), MASK, None, 3)


def test_per_sample_iid_t_is_uniform():
    # Kolmogorov-Smirnov-style bound on the empirical CDF of t over many samples
    n = 4000
    cfg = NoiseConfig(t_low=0.3, t_high=0.8)
    x0 = torch.zeros(n, 1, dtype=torch.long)
    t = N.apply_noise_per_sample(x0, list(range(n)), 11, 0, cfg, MASK).t_per_token[:, 0].double()
    u = ((t - 0.3) / 0.5).sort().values
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = (ecdf - u).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)   # 1 % critical value
