"""ELBO estimator, DPO loss, VRPO noise and the DPO loss variance (diffusion/likelihood, preference,
vrpo, dpo_estimate) against brute-force definitions and hand-computed values."""

import math

import pytest
import torch

from megatron_dllm.diffusion import dpo_estimate as DE
from megatron_dllm.diffusion import vrpo as VR
from megatron_dllm.diffusion.likelihood import elbo
from megatron_dllm.diffusion.preference import dpo_loss
from megatron_dllm.diffusion.seeding import noise_generator

# ---- ELBO --------------------------------------------------------------------------------------


def brute_force_elbo(logp, noise_mask, t, response_mask):
    P, n, L = logp.shape
    out = []
    for p in range(P):
        total = 0.0
        for d in range(n):
            for i in range(L):
                if noise_mask[p, d, i] and (response_mask is None or response_mask[p, i]):
                    total += float(logp[p, d, i]) / float(t[p, d])
        out.append(total / n)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("with_response_mask", [False, True])
def test_elbo_equals_brute_force(with_response_mask):
    g = torch.Generator().manual_seed(0)
    P, n, L = 3, 4, 10
    logp = -torch.rand(P, n, L, generator=g) * 4
    noise_mask = torch.rand(P, n, L, generator=g) < 0.5
    t = torch.rand(P, n, generator=g) * 0.9 + 0.1
    rm = torch.rand(P, L, generator=g) < 0.7 if with_response_mask else None
    logp[~noise_mask] = float("nan")  # values off the noise mask are ignored
    got = elbo(logp, noise_mask, t, rm)
    assert got.shape == (P,) and got.dtype == torch.float32
    assert torch.allclose(got.double(), brute_force_elbo(logp, noise_mask, t, rm), rtol=1e-5)


def test_elbo_carries_grad_and_is_tight_for_a_context_free_model():
    """A model that ignores its input has ELBO = log p(y) (sum of log-probs): the 1/t weight is exact."""
    L = 6
    logp_pos = -torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0, 0.7], dtype=torch.float64)
    rm = torch.tensor([[False, True, True, True, True, True]])
    exact = float(logp_pos[1:].sum())
    sampling = VR.vrpo(8)
    estimates = []
    for it in range(400):
        noise = VR.preference_noise([0], L, sampling, seed=1, iteration=it).policy_chosen
        draws = VR.noised_draws(torch.zeros(1, L, dtype=torch.long), rm, noise, mask_token_id=9)
        estimates.append(float(elbo(logp_pos.expand(1, 8, L), draws.noise_mask, draws.t, rm)))
    est = torch.tensor(estimates, dtype=torch.float64)
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - exact) < 4 * se
    x = torch.zeros(1, 2, 3, requires_grad=True)
    elbo(x, torch.ones(1, 2, 3, dtype=torch.bool), torch.tensor([[0.5, 1.0]])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[[1.0] * 3, [0.5] * 3]]))


@pytest.mark.parametrize("bad,text", [(0.0, "0"), (-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan")])
def test_elbo_rejects_t_outside_0_1(bad, text):
    t = torch.tensor([[0.5, bad]])
    with pytest.raises(ValueError,
                       match=r"^t must lie in \(0, 1\] \(the ELBO weight is 1/t\), got " + text + "$"):
        elbo(torch.zeros(1, 2, 3), torch.ones(1, 2, 3, dtype=torch.bool), t)


def test_elbo_shape_errors():
    lp, nm, t = torch.zeros(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.bool), torch.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"^elbo: token_logprob must be \[P, n, L\], got shape \(2, 12\)$"):
        elbo(lp.view(2, 12), nm, t)
    with pytest.raises(ValueError, match=r"^elbo: noise_mask has shape \(2, 3, 5\), expected \(2, 3, 4\) "
                                         r"like token_logprob$"):
        elbo(lp, torch.ones(2, 3, 5, dtype=torch.bool), t)
    with pytest.raises(ValueError, match=r"^elbo: t has shape \(2,\), expected \(2, 3\) \(one t per draw\)$"):
        elbo(lp, nm, t[:, 0])
    with pytest.raises(ValueError, match=r"^elbo: response_mask has shape \(2, 3\), expected \(2, 4\)$"):
        elbo(lp, nm, t, torch.ones(2, 3, dtype=torch.bool))


# ---- DPO loss ----------------------------------------------------------------------------------


def test_dpo_loss_on_hand_computed_elbos():
    pc = torch.tensor([-10.0, -20.0], requires_grad=True)
    pr = torch.tensor([-12.0, -18.0], requires_grad=True)
    rc, rr = torch.tensor([-11.0, -20.0]), torch.tensor([-11.0, -19.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # d_w = (1, 0), d_l = (-1, 1); margin = 0.5 * (d_w - d_l) = (1, -0.5)
    assert torch.allclose(out.margin, torch.tensor([1.0, -0.5]))
    assert torch.allclose(out.loss, torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))]))
    assert torch.allclose(out.reward_chosen, torch.tensor([0.5, 0.0]))
    assert torch.allclose(out.reward_rejected, torch.tensor([-0.5, 0.5]))
    assert torch.equal(out.correct, torch.tensor([1.0, 0.0]))
    assert torch.allclose(out.kl, torch.tensor([(1 + 1) / 4, (0 + 1) / 4]))  # (d_w^2 + d_l^2) / 4
    want = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))
    assert float(out.loss_sum) == pytest.approx(want, rel=1e-6)
    out.loss_sum.backward()
    # d loss / d B_pi(y_w) = -beta * sigmoid(-margin); d / d B_pi(y_l) = +beta * sigmoid(-margin)
    s = torch.sigmoid(-torch.tensor([1.0, -0.5]))
    assert torch.allclose(pc.grad, -0.5 * s) and torch.allclose(pr.grad, 0.5 * s)


def test_dpo_loss_tie_is_log2_and_wrong_and_reference_gets_no_grad():
    rc = torch.tensor([-3.0], requires_grad=True)
    out = dpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), rc, torch.tensor([-4.0]), beta=0.1)
    assert float(out.loss) == pytest.approx(math.log(2.0), abs=1e-7)
    assert float(out.correct) == 0.0 and float(out.kl) == 0.0
    assert not out.margin.requires_grad and not out.loss.requires_grad


def test_dpo_loss_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"^dpo_loss: beta must be > 0, got 0.0$"):
        dpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError, match=r"^dpo_loss: reference_rejected has shape \(2,\), expected \(3,\) "
                                         r"like policy_chosen$"):
        dpo_loss(x, x, x, torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match=r"^dpo_loss: ELBOs must be \[P\] \(one per pair\), got "
                                         r"policy_chosen \(3, 1\)$"):
        dpo_loss(x[:, None], x, x, x, 0.1)


# ---- VRPO noise --------------------------------------------------------------------------------


def brute_force_noise(pair_index, seq_len, sampling, seed, iteration):
    """Per-source (t, u) drawn as the docstring of vrpo.py says, one generator per pair."""
    gen = noise_generator(seed, pair_index, iteration)
    out = []
    for _ in range(sampling.num_sources):
        n_t = sampling.timesteps
        if sampling.stratify_t:
            jit = torch.rand(n_t, generator=gen, dtype=torch.float64)
            v = [(j + float(jit[j])) / n_t for j in range(n_t)]
        else:
            v = torch.rand(n_t, generator=gen, dtype=torch.float64).tolist()
        t = [float(torch.tensor(sampling.eps + (1 - sampling.eps) * x, dtype=torch.float64).float())
             for x in v for _ in range(sampling.masks_per_timestep)]
        out.append((torch.tensor(t), torch.rand(sampling.num_draws, seq_len, generator=gen)))
    return out


SAMPLINGS = [VR.vrpo(4), VR.naive(4), VR.ElboSampling(timesteps=2, masks_per_timestep=3),
             VR.ElboSampling(timesteps=3, share_reference=False),
             VR.ElboSampling(timesteps=3, share_pair=False, stratify_t=False)]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=str)
def test_preference_noise_equals_brute_force(sampling):
    pairs, L = [4, 9, 2], 7
    noise = VR.preference_noise(pairs, L, sampling, seed=3, iteration=11)
    expected = {s: brute_force_noise(s, L, sampling, 3, 11) for s in pairs}
    for role in VR.ROLES:
        draw = getattr(noise, role)
        assert draw.t.shape == (3, sampling.num_draws) and draw.u.shape == (3, sampling.num_draws, L)
        for row, s in enumerate(pairs):
            t, u = expected[s][sampling.source(role)]
            assert torch.equal(draw.t[row], t), role
            assert torch.equal(draw.u[row], u), role
        assert bool(((draw.t >= sampling.eps) & (draw.t < 1)).all())


def test_vrpo_shares_everything_and_naive_nothing():
    v = VR.preference_noise([0, 1], 5, VR.vrpo(3), 0, 0)
    assert all(getattr(v, r) is v.policy_chosen for r in VR.ROLES)
    nv = VR.preference_noise([0, 1], 5, VR.naive(3), 0, 0)
    draws = [getattr(nv, r) for r in VR.ROLES]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(draws[a].u, draws[b].u) and not torch.equal(draws[a].t, draws[b].t)
    half = VR.preference_noise([0], 5, VR.ElboSampling(share_pair=False), 0, 0)
    assert half.policy_chosen is half.reference_chosen and half.policy_rejected is half.reference_rejected
    assert half.policy_chosen is not half.policy_rejected


def test_stratified_t_has_one_draw_per_stratum_and_allocation_repeats_t():
    s = VR.ElboSampling(timesteps=5, masks_per_timestep=2, eps=0.01)
    t = VR.preference_noise(list(range(20)), 3, s, 0, 2).policy_chosen.t
    assert torch.equal(t[:, 0::2], t[:, 1::2])
    stratum = ((t[:, 0::2].double() - 0.01) / 0.99 * 5).floor()
    assert torch.equal(stratum, torch.arange(5.0, dtype=torch.float64).expand(20, 5))


def test_noise_is_deterministic_per_seed_pair_iteration_and_independent_of_the_batch():
    a = VR.preference_noise([3, 8], 6, VR.naive(2), 5, 7)
    b = VR.preference_noise([8], 6, VR.naive(2), 5, 7)
    c = VR.preference_noise(torch.tensor([3, 8]), 6, VR.naive(2), 5, 7)
    for role in VR.ROLES:
        assert torch.equal(getattr(a, role).u[1], getattr(b, role).u[0])
        assert torch.equal(getattr(a, role).u, getattr(c, role).u)
    for other in (VR.preference_noise([3, 8], 6, VR.naive(2), 5, 8),
                  VR.preference_noise([3, 8], 6, VR.naive(2), 6, 7)):
        assert not torch.equal(a.policy_chosen.u, other.policy_chosen.u)


def test_noised_draws_equals_brute_force_and_uses_the_prefix_for_shorter_rows():
    g = torch.Generator().manual_seed(1)
    noise = VR.preference_noise([0, 1], 8, VR.vrpo(3), 0, 0).policy_chosen
    for L in (8, 6):
        x0 = torch.randint(0, 5, (2, L), generator=g)
        rm = torch.rand(2, L, generator=g) < 0.6
        d = VR.noised_draws(x0, rm, noise, mask_token_id=7)
        assert d.xt.shape == (2, 3, L) and torch.equal(d.t, noise.t)
        for p in range(2):
            for k in range(3):
                for i in range(L):
                    masked = bool(rm[p, i]) and float(noise.u[p, k, i]) < float(noise.t[p, k])
                    assert bool(d.noise_mask[p, k, i]) == masked
                    assert int(d.xt[p, k, i]) == (7 if masked else int(x0[p, i]))


def test_vrpo_noise_errors():
    with pytest.raises(ValueError, match=r"^ElboSampling: timesteps and masks_per_timestep must be >= 1, "
                                         r"got 0 and 1$"):
        VR.ElboSampling(timesteps=0)
    with pytest.raises(ValueError, match=r"^ElboSampling.eps must be in \(0, 1\), got 0.0$"):
        VR.vrpo(2, eps=0.0)
    with pytest.raises(ValueError, match=r"^preference_noise: no pair indices$"):
        VR.preference_noise([], 4, VR.vrpo(1), 0, 0)
    noise = VR.preference_noise([0], 4, VR.vrpo(1), 0, 0).policy_chosen
    with pytest.raises(ValueError, match=r"^noised_draws: noise drawn for 1 rows of length 4, rows here "
                                         r"are 1 x 5$"):
        VR.noised_draws(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool), noise, 9)
    with pytest.raises(ValueError, match=r"^noised_draws: response_mask has shape \(1, 3\), expected "
                                         r"\(1, 4\) like x0$"):
        VR.noised_draws(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), noise, 9)


# ---- DPO estimate and its variance -------------------------------------------------------------

VOCAB, MASK_ID = 8, 8


def toy_scorer(table, pos_bias):
    """log p(target | xt): logits = position bias + mean embedding of the visible tokens."""

    def score(xt, targets):
        visible = (xt != MASK_ID).double()
        emb = table[xt.clamp(max=VOCAB - 1)] * visible[..., None]              # [N, L, V]
        ctx = emb.sum(1) / visible.sum(1, keepdim=True).clamp(min=1)            # [N, V]
        logits = pos_bias[None, : xt.shape[1]] + 3.0 * ctx[:, None, :]
        return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]

    return score


def toy_setting(perturbation):
    g = torch.Generator().manual_seed(42)
    table = torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64)
    pos = torch.randn(16, VOCAB, generator=g, dtype=torch.float64) * 0.5
    delta = torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64)
    P, prompt = 6, 4
    chosen = torch.randint(0, VOCAB, (P, 12), generator=g)
    rejected = chosen.clone()
    rejected[:, prompt + 2] = (rejected[:, prompt + 2] + 1) % VOCAB  # a near miss
    rejected = rejected[:, :10]
    cm = torch.zeros(P, 12, dtype=torch.bool)
    cm[:, prompt:] = True
    batch = DE.PreferenceBatch(chosen=chosen, rejected=rejected, chosen_mask=cm,
                               rejected_mask=cm[:, :10].clone(), pair_indices=list(range(100, 100 + P)))
    return toy_scorer(table + perturbation * delta, pos), toy_scorer(table, pos), batch


def test_dpo_estimate_equals_brute_force_composition():
    policy, reference, batch = toy_setting(0.1)
    sampling = VR.naive(2)
    out = DE.dpo_estimate(policy, reference, batch, sampling, 0.2, MASK_ID, seed=1, iteration=4)
    again = DE.dpo_estimate(policy, reference, batch, sampling, 0.2, MASK_ID, seed=1, iteration=4)
    assert torch.equal(out.loss, again.loss) and torch.equal(out.kl, again.kl)
    noise = VR.preference_noise(batch.pair_indices, 12, sampling, 1, 4)
    b = {}
    for role in VR.ROLES:
        model = policy if role.startswith("policy") else reference
        x0, rm = ((batch.chosen, batch.chosen_mask) if role.endswith("chosen")
                  else (batch.rejected, batch.rejected_mask))
        d = VR.noised_draws(x0, rm, getattr(noise, role), MASK_ID)
        logp = torch.stack([torch.stack([model(d.xt[p, k][None], x0[p][None])[0] for k in range(2)])
                            for p in range(len(x0))])
        b[role] = brute_force_elbo(logp, d.noise_mask, d.t, rm)
    margin = 0.2 * ((b["policy_chosen"] - b["reference_chosen"])
                     - (b["policy_rejected"] - b["reference_rejected"]))
    assert torch.allclose(out.loss.double(), -torch.nn.functional.logsigmoid(margin), rtol=1e-5)


def test_vrpo_with_policy_equal_to_reference_has_exactly_zero_variance():
    _, reference, batch = toy_setting(0.0)
    v = DE.loss_variance(reference, reference, batch, VR.vrpo(2), 0.1, MASK_ID, repeats=5)
    assert v.variance == 0.0 and torch.equal(v.losses, torch.full((5,), v.losses[0].item()))
    assert float(v.losses[0]) == pytest.approx(math.log(2.0), abs=1e-6)
    out = DE.dpo_estimate(reference, reference, batch, VR.vrpo(2), 0.1, MASK_ID, 0, 0)
    assert torch.equal(out.margin, torch.zeros(6))
    naive = DE.loss_variance(reference, reference, batch, VR.naive(2), 0.1, MASK_ID, repeats=5)
    assert naive.variance > 0.0
    assert DE.variance_ratio(naive, v) == float("inf")


def test_vrpo_lowers_the_dpo_loss_variance_on_a_fixed_toy_model():
    policy, reference, batch = toy_setting(0.1)
    for n in (1, 4):
        naive = DE.loss_variance(policy, reference, batch, VR.naive(n), 0.1, MASK_ID, repeats=60)
        vrpo = DE.loss_variance(policy, reference, batch, VR.vrpo(n), 0.1, MASK_ID, repeats=60)
        assert DE.variance_ratio(naive, vrpo) > 5.0, n
        # the loss is convex in the margin, so more variance inflates its mean (Jensen)
        assert naive.mean > vrpo.mean


def test_both_samplings_estimate_the_same_mean_margin():
    """The margin is linear in the ELBOs, so naive and VRPO are unbiased for the same value."""
    policy, reference, batch = toy_setting(0.1)
    means = {}
    for name, sampling in (("naive", VR.naive(2)), ("vrpo", VR.vrpo(2))):
        m = torch.stack([DE.dpo_estimate(policy, reference, batch, sampling, 0.1, MASK_ID, 0, r)
                         .margin.double().mean() for r in range(60)])
        means[name] = (float(m.mean()), float(m.var()) / 60)
    (a, va), (b, vb) = means["naive"], means["vrpo"]
    assert abs(a - b) < 4 * math.sqrt(va + vb)


def test_estimate_errors():
    policy, reference, batch = toy_setting(0.1)
    with pytest.raises(ValueError, match=r"^loss_variance: repeats must be >= 2 to estimate a variance, "
                                         r"got 1$"):
        DE.loss_variance(policy, reference, batch, VR.vrpo(1), 0.1, MASK_ID, repeats=1)
    with pytest.raises(ValueError, match=r"^scorer returned shape \(6, 11\), expected \(6, 12\)$"):
        DE.dpo_estimate(lambda xt, y: policy(xt, y)[:, :11], reference, batch, VR.vrpo(1), 0.1, MASK_ID, 0, 0)


def test_variance_ratio_interval_equals_a_hand_written_bootstrap():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(30, generator=g, dtype=torch.float64) * 2
    imp = torch.randn(25, generator=g, dtype=torch.float64)
    lv = [DE.LossVariance(losses=x, mean=float(x.mean()), variance=float(x.var())) for x in (base, imp)]
    lo, hi = DE.variance_ratio_interval(lv[0], lv[1], level=0.8, resamples=50, seed=9)
    gen = torch.Generator().manual_seed(9)
    ratios = []
    for _ in range(50):
        a = base[torch.randint(0, 30, (30,), generator=gen)]
        b = imp[torch.randint(0, 25, (25,), generator=gen)]
        ratios.append(float(a.var()) / float(b.var()))
    ratios.sort()
    # linear-interpolated 10% / 90% quantiles of 50 values: positions 4.9 and 44.1
    want_lo = ratios[4] + 0.9 * (ratios[5] - ratios[4])
    want_hi = ratios[44] + 0.1 * (ratios[45] - ratios[44])
    assert lo == pytest.approx(want_lo, rel=1e-12) and hi == pytest.approx(want_hi, rel=1e-12)
    assert lo < DE.variance_ratio(lv[0], lv[1]) < hi
    zero = DE.LossVariance(losses=torch.zeros(4, dtype=torch.float64), mean=0.0, variance=0.0)
    assert DE.variance_ratio_interval(lv[0], zero) == (float("inf"), float("inf"))
    with pytest.raises(ValueError, match=r"^variance_ratio_interval: level must be in \(0, 1\), got 1.0$"):
        DE.variance_ratio_interval(lv[0], lv[1], level=1.0)
