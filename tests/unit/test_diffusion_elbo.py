"""The Monte-Carlo diffusion loss is an unbiased estimator, and antithetic sampling lowers its variance.

Unbiasedness: a toy denoiser p(x0_i | xt) on vocab V = 3, length L = 3 (any fixed function of xt is
a valid model). Its exact loss E_t E_mask [ w(t) sum_masked CE ] is computed by summing over all
2^L masks and integrating the polynomial in t in closed form; the mean of many batch estimates
made with the library's sampler, noising and loss must match it within 3 standard errors.

Variance: batch estimates of the ELBO (1/t weight, t ~ U[1e-3, 1]) on a toy model whose
cross-entropy grows with the masked fraction, as a real LM's does; L = 64. With L = 3 the gain is
negligible: the 1/t weight makes E[loss | t] nearly flat, and what remains is mask noise that
stratifying t cannot remove.
"""

import itertools
import math

import pytest
import torch

from megatron_dllm.diffusion import losses as LO
from megatron_dllm.diffusion import noising as N

BATCH = 16


def toy_logits(xt, vocab, mask_id, pos_bias, scale):
    """Logits [N, L, V] from xt [N, L]: favour the tokens seen among the visible ones.

    Confidence grows with the number of visible tokens; a small per-position bias breaks ties.
    """
    visible = xt != mask_id
    counts = torch.stack([((xt == v) & visible).sum(1) for v in range(vocab)], 1).double()  # [N, V]
    return pos_bias[None] + scale * counts[:, None, :]


# ---- exact expectation on V = L = 3 ----------------------------------------------------------

V, L, MASK = 3, 3, 3
DATA = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 2, 1], [0, 1, 0]])
POS_BIAS = torch.randn(L, V, generator=torch.Generator().manual_seed(1234), dtype=torch.float64) * 0.3


def ce_of(xt, x0):
    return LO.per_token_cross_entropy(toy_logits(xt, V, MASK, POS_BIAS, 2.0), x0).double()


def t_moment(power_t, power_1mt, lo, hi):
    """(1 / (hi - lo)) * integral_lo^hi t^a (1 - t)^b dt for integers a >= 0, b >= 0, exactly."""
    total = sum(math.comb(power_1mt, j) * (-1) ** j * (hi ** (power_t + j + 1) - lo ** (power_t + j + 1))
                / (power_t + j + 1) for j in range(power_1mt + 1))
    return total / (hi - lo)


def exact_loss(x0, cfg, weighting):
    """E over t and masks of sum_{i masked} w CE_i(xt) for one x0 [L]."""
    lo, hi = cfg.bounds
    total = 0.0
    for bits in itertools.product([False, True], repeat=L):
        S = torch.tensor(bits)
        m = int(S.sum())
        if m == 0:
            continue
        xt = torch.where(S, torch.tensor(MASK), x0)[None]
        c = float(ce_of(xt, x0[None])[0][S].sum())  # sum over the masked positions
        if weighting == "inv_t":   # P(S | t) / t = t^(m-1) (1-t)^(L-m)
            total += c * t_moment(m - 1, L - m, lo, hi)
        else:
            total += c * t_moment(m, L - m, lo, hi)
    return total


def draw(cfg, num_batches, x0, seed, per_sample, block_size=None):
    """Noise for num_batches batches of BATCH rows through the library; x0 [num_batches*BATCH, L]."""
    if per_sample:
        return N.apply_noise_per_sample(x0, range(x0.shape[0]), seed, 0, cfg, MASK, None, block_size)
    g = torch.Generator().manual_seed(seed)
    K = x0.shape[1] // block_size if block_size else 1
    t = torch.cat([N.sample_t(BATCH, K, cfg, g) for _ in range(num_batches)])
    return N.apply_noise(x0, t, MASK, None, g, block_size)


def batch_estimates(noise, ce, weighting, num_batches):
    """One all-tokens estimate per batch, checked against the library's loss on all batches."""
    w = 1.0 / noise.t_per_token.double() if weighting == "inv_t" else 1.0
    per_token = torch.where(noise.noise_mask, ce * w, 0.0)
    est = per_token.view(num_batches, -1).mean(1)  # batch sum / (BATCH * L)
    pooled = LO.diffusion_loss(ce, noise.noise_mask, noise.t_per_token, weighting=weighting,
                               normalization="all_tokens")
    assert math.isclose(pooled.mean().item(), est.mean().item(), rel_tol=1e-5)
    return est


def check_within_3_se(est, exact, label):
    se = est.std().item() / math.sqrt(est.numel())
    print(f"\n{label}: MC {est.mean().item():.5f} exact {exact:.5f} SE {se:.5f}")
    assert abs(est.mean().item() - exact) < 3 * se


@pytest.mark.parametrize("cfg, weighting, per_sample, batches", [
    (N.NoiseConfig(sampling="iid"), "inv_t", False, 8000),
    (N.NoiseConfig(sampling="antithetic"), "inv_t", False, 8000),
    (N.NoiseConfig(sampling="stratified"), "inv_t", False, 8000),
    (N.NoiseConfig(t_low=0.3, t_high=0.8, sampling="antithetic"), "inv_t", False, 5000),
    (N.NoiseConfig(t_low=0.3, t_high=0.8), "none", False, 5000),
    (N.NoiseConfig(sampling="stratified", num_strata=BATCH), "inv_t", True, 1000),
], ids=["iid", "antithetic", "stratified", "band", "band-unweighted", "per-sample"])
def test_monte_carlo_mean_matches_exact_expectation(cfg, weighting, per_sample, batches):
    # row r always holds DATA[r % 4]: the t of a batch position must still be uniform
    x0 = DATA[torch.arange(batches * BATCH) % len(DATA)]
    noise = draw(cfg, batches, x0, seed=0, per_sample=per_sample)
    est = batch_estimates(noise, ce_of(noise.xt, x0), weighting, batches)
    exact = sum(exact_loss(row, cfg, weighting) for row in DATA) / (len(DATA) * L)
    check_within_3_se(est, exact, f"{cfg.sampling} t in {cfg.bounds} w={weighting}")


# ---- per-block t, BD objective: block k sees its own noisy block and the clean earlier blocks ---

BD_L, BD_BLOCK = 4, 2
BD_DATA = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0], [1, 0, 1, 0]])
BD_POS_BIAS = torch.randn(BD_L, V, generator=torch.Generator().manual_seed(99), dtype=torch.float64) * 0.3


def bd_ce_of(xt, x0):
    """CE [N, L] of a BD toy: block k's logits count its visible noisy tokens and clean earlier blocks."""
    logits = []
    for k in range(BD_L // BD_BLOCK):
        s, e = k * BD_BLOCK, (k + 1) * BD_BLOCK
        ctx = torch.cat([x0[:, :s], xt[:, s:e]], dim=1)
        logits.append(toy_logits(ctx, V, MASK, BD_POS_BIAS[:e], 2.0)[:, s:e])
    return LO.per_token_cross_entropy(torch.cat(logits, dim=1), x0).double()


def bd_exact_loss(x0, cfg):
    """sum over blocks of E_{t_k} sum_{S in block k} t^(m-1) (1-t)^(b-m) c_k(S): only the marginal
    distribution of each block's t matters."""
    lo, hi = cfg.bounds
    total = 0.0
    for k in range(BD_L // BD_BLOCK):
        for bits in itertools.product([False, True], repeat=BD_BLOCK):
            m = sum(bits)
            if m == 0:
                continue
            S = torch.zeros(BD_L, dtype=torch.bool)
            S[k * BD_BLOCK:(k + 1) * BD_BLOCK] = torch.tensor(bits)
            xt = torch.where(S, torch.tensor(MASK), x0)[None]
            c = float(bd_ce_of(xt, x0[None])[0][S].sum())
            total += c * t_moment(m - 1, BD_BLOCK - m, lo, hi)
    return total


@pytest.mark.parametrize("sampling", N.SAMPLINGS)
def test_per_block_t_is_unbiased_for_the_bd_objective(sampling):
    cfg = N.NoiseConfig(sampling=sampling, granularity="block")
    batches = 8000
    x0 = BD_DATA[torch.arange(batches * BATCH) % len(BD_DATA)]
    noise = draw(cfg, batches, x0, seed=3, per_sample=False, block_size=BD_BLOCK)
    est = batch_estimates(noise, bd_ce_of(noise.xt, x0), "inv_t", batches)
    exact = sum(bd_exact_loss(row, cfg) for row in BD_DATA) / (len(BD_DATA) * BD_L)
    check_within_3_se(est, exact, f"per-block {sampling}")


def test_exact_expectation_is_sensitive_to_the_weight_and_band():
    # the check above can fail: dropping 1/t or ignoring the band moves the target by many SEs
    def target(cfg, w):
        return sum(exact_loss(row, cfg, w) for row in DATA) / (len(DATA) * L)
    full, band = N.NoiseConfig(), N.NoiseConfig(t_low=0.3, t_high=0.8)
    assert abs(target(full, "inv_t") - target(full, "none")) > 0.3
    assert abs(target(full, "none") - target(band, "none")) > 0.02


# ---- variance of the batch estimate ----------------------------------------------------------


def elbo_batch_estimates(sampling, num_batches, seed, vocab=16, length=64):
    """ELBO estimates (1/t, all tokens) of num_batches batches of BATCH constant-token sequences."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, vocab, (num_batches * BATCH, 1), generator=g).expand(-1, length)
    cfg = N.NoiseConfig(sampling=sampling)
    t = torch.cat([N.sample_t(BATCH, 1, cfg, g) for _ in range(num_batches)])
    noise = N.apply_noise(x0, t, vocab, None, g)
    logits = toy_logits(noise.xt, vocab, vocab, torch.zeros(length, vocab, dtype=torch.float64),
                        8.0 / length)
    ce = LO.per_token_cross_entropy(logits, x0)
    est = torch.where(noise.noise_mask, ce / noise.t_per_token, 0.0).view(num_batches, -1)
    return est.double().sum(1) / (BATCH * length)


def test_antithetic_and_stratified_reduce_variance():
    n = 2000
    var = {s: elbo_batch_estimates(s, n, seed=7).var().item() for s in N.SAMPLINGS}
    print(f"\nELBO batch-estimate variance (B={BATCH}, L=64, {n} batches): "
          + ", ".join(f"{s} {v:.3e}" for s, v in var.items())
          + f"; antithetic/iid {var['antithetic'] / var['iid']:.3f}, "
            f"stratified/iid {var['stratified'] / var['iid']:.3f}")
    # the relative standard error of each variance estimate is about 5 % here
    assert var["antithetic"] < 0.5 * var["iid"]
    assert var["stratified"] < 0.5 * var["iid"]
