"""Losses: brute-force references for every weighting / normalisation, CAP, AR, label shift, and the
reductions of the BD layout (block = L -> MDLM, block = 1 with t = 1 -> no-shift AR) on a toy model."""

import math

import pytest
import torch

from megatron_dllm.diffusion import losses as LO
from megatron_dllm.diffusion import masks as M
from megatron_dllm.diffusion import noising as N


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_case(B=3, L=10, V=7, seed=0):
    g = gen(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    x0 = torch.randint(0, V, (B, L), generator=g)
    loss_mask = torch.rand(B, L, generator=g) < 0.8
    loss_mask[2] = False  # an empty row
    t = torch.rand(B, generator=g) * 0.9 + 0.1
    noise = N.apply_noise(x0, t, V, loss_mask, g)
    return logits, x0, loss_mask, noise


def test_per_token_cross_entropy_reference():
    logits, x0, _, _ = random_case()
    ce = LO.per_token_cross_entropy(logits.to(torch.bfloat16), x0)
    assert ce.dtype == torch.float32 and ce.shape == x0.shape
    B, L, _ = logits.shape
    for b in range(B):
        for i in range(L):
            row = logits[b, i].to(torch.bfloat16).double()
            ref = -(row[x0[b, i]] - torch.logsumexp(row, 0))
            assert abs(ce[b, i].item() - ref.item()) < 1e-5


def brute_force_loss(ce, noise_mask, t, loss_mask, weighting, normalization):
    B, L = ce.shape
    total, per_row, lm_rows = 0.0, [], 0
    n_noised, n_lm = 0, 0
    for b in range(B):
        row_sum, row_lm = 0.0, 0
        for i in range(L):
            if loss_mask[b, i]:
                row_lm += 1
                if noise_mask[b, i]:
                    w = 1.0 / float(t[b, i]) if weighting == "inv_t" else 1.0
                    row_sum += w * float(ce[b, i])
                    n_noised += 1
        total += row_sum
        n_lm += row_lm
        if row_lm:
            per_row.append(row_sum / row_lm)
            lm_rows += 1
        else:
            per_row.append(0.0)
    if normalization == "all_tokens":
        return total, n_lm
    if normalization == "masked_tokens":
        return total, n_noised
    return sum(per_row), lm_rows


@pytest.mark.parametrize("weighting", LO.WEIGHTINGS)
@pytest.mark.parametrize("normalization", LO.NORMALIZATIONS)
def test_diffusion_loss_matches_brute_force(weighting, normalization):
    logits, x0, loss_mask, noise = random_case()
    ce = LO.per_token_cross_entropy(logits, x0).double().requires_grad_()
    out = LO.diffusion_loss(ce, noise.noise_mask, noise.t_per_token, loss_mask,
                            weighting=weighting, normalization=normalization)
    ref_sum, ref_count = brute_force_loss(ce.detach(), noise.noise_mask, noise.t_per_token, loss_mask,
                                          weighting, normalization)
    assert math.isclose(out.loss_sum.item(), ref_sum, rel_tol=1e-6)
    assert out.num_tokens.item() == ref_count
    assert out.loss_sum.dim() == 0 and out.num_tokens.dim() == 0
    out.loss_sum.backward()
    sel = noise.noise_mask & loss_mask
    assert (ce.grad[~sel] == 0).all() and (ce.grad[sel] > 0).all()


def test_non_finite_ce_off_the_mask_is_ignored_and_complement_t0_is_safe():
    x0 = torch.randint(0, 5, (2, 6), generator=gen(1))
    first, second = N.complementary_pair(x0, torch.tensor([1.0, 0.5]), 5, None, gen(2))
    ce = torch.rand(2, 6, generator=gen(3))
    ce_bad = torch.where(second.noise_mask, ce, torch.full_like(ce, float("nan")))
    out = LO.diffusion_loss(ce_bad, second.noise_mask, second.t_per_token, weighting="inv_t",
                            normalization="all_tokens")
    assert torch.isfinite(out.loss_sum)
    expected = (ce[second.noise_mask] / second.t_per_token[second.noise_mask]).sum()
    torch.testing.assert_close(out.loss_sum, expected)


def test_accuracy_and_buckets():
    logits, x0, loss_mask, noise = random_case(B=4, L=50, seed=3)
    t_tok = torch.rand(4, 50, generator=gen(9))  # arbitrary per-token t to fill every bucket
    t_tok[0, :5] = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])  # bucket edges belong to the lower bucket
    ce = LO.per_token_cross_entropy(logits, x0)
    pred = logits.argmax(-1)
    out = LO.diffusion_loss(ce, noise.noise_mask, t_tok, loss_mask, weighting="inv_t",
                            predictions=pred, targets=x0, num_buckets=5)
    sel = noise.noise_mask & loss_mask
    assert out.correct.item() == int(((pred == x0) & sel).sum())
    assert out.num_noised.item() == int(sel.sum())
    ref_sum, ref_cnt = [0.0] * 5, [0] * 5
    for b in range(4):
        for i in range(50):
            if sel[b, i]:
                k = sum(float(t_tok[b, i]) > float(torch.tensor(e / 5)) for e in range(1, 5))
                ref_sum[k] += float(ce[b, i])
                ref_cnt[k] += 1
    assert out.bucket_count.tolist() == ref_cnt
    torch.testing.assert_close(out.bucket_loss_sum, torch.tensor(ref_sum, dtype=torch.float32))
    assert LO.t_buckets(torch.tensor([0.2, 0.2001, 1.0, 0.0]), 5).tolist() == [0, 1, 4, 0]


def test_loss_argument_errors():
    z = torch.zeros(1, 2)
    m = torch.zeros(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"weighting must be one of \('inv_t', 'none'\), got 'sqrt'"):
        LO.diffusion_loss(z, m, z, weighting="sqrt")
    with pytest.raises(ValueError, match="normalization must be one of"):
        LO.diffusion_loss(z, m, z, normalization="batch")
    with pytest.raises(ValueError, match="predictions need targets"):
        LO.diffusion_loss(z, m, z, predictions=m.long())


def test_cap_entropy_loss_matches_brute_force():
    logits, x0, loss_mask, noise = random_case(B=3, L=40, V=4, seed=5)
    logits.requires_grad_()
    lam = 2.0
    out = LO.cap_entropy_loss(logits, x0, noise.noise_mask, lam, loss_mask)
    total, count = 0.0, 0
    for b in range(3):
        for i in range(40):
            p = torch.softmax(logits[b, i].detach(), 0)
            if noise.noise_mask[b, i] and loss_mask[b, i] and int(p.argmax()) == int(x0[b, i]):
                total += float(-(p * p.log()).sum())
                count += 1
    assert count > 0 and out.num_tokens.item() == count
    assert math.isclose(out.mean().item(), lam * total / count, rel_tol=1e-6)
    out.mean().backward()
    assert logits.grad.abs().sum() > 0  # gradient flows through the entropy
    none = LO.cap_entropy_loss(logits, x0, torch.zeros_like(noise.noise_mask), lam)
    assert none.mean().item() == 0.0 and none.num_tokens.item() == 0


def test_ar_loss_and_label_shift():
    logits, x0, loss_mask, noise = random_case(B=3, L=10, seed=6)
    out = LO.ar_loss(logits, x0, loss_mask)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), x0[:, 1:].reshape(-1),
                                            reduction="none").view(3, 9)
    sel = loss_mask[:, 1:]
    assert math.isclose(out.loss_sum.item(), float(ref[sel].sum()), rel_tol=1e-6)
    assert out.num_tokens.item() == int(sel.sum())
    assert out.correct.item() == int(((logits[:, :-1].argmax(-1) == x0[:, 1:]) & sel).sum())
    # label shift: DiffuLLaMA's logits[:, :-1] against x0[:, 1:] at the noised target positions
    sh = LO.label_shift(x0, noise.noise_mask, noise.t_per_token, loss_mask)
    ce = LO.per_token_cross_entropy(logits, sh.targets)
    got = LO.diffusion_loss(ce, sh.noise_mask, sh.t_per_token, sh.loss_mask, weighting="inv_t",
                            normalization="masked_tokens")
    sel = noise.noise_mask[:, 1:] & loss_mask[:, 1:]
    want = (ref[sel] / noise.t_per_token[:, 1:][sel]).sum()
    assert math.isclose(got.loss_sum.item(), float(want), rel_tol=1e-6)
    assert got.num_tokens.item() == int(sel.sum())


# ---- reductions on a small random transformer --------------------------------------------------


class ToyModel(torch.nn.Module):
    """Two pre-norm attention + MLP layers with learned absolute positions (float64)."""

    def __init__(self, vocab, max_len, d=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)  # test-only module init; the library never touches the global RNG
        self.tok = torch.nn.Embedding(vocab + 1, d)  # + [MASK] = vocab
        self.pos = torch.nn.Embedding(max_len, d)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict(dict(n1=torch.nn.LayerNorm(d), qkv=torch.nn.Linear(d, 3 * d),
                                     n2=torch.nn.LayerNorm(d), mlp=torch.nn.Linear(d, d)))
            for _ in range(2))
        self.head = torch.nn.Linear(d, vocab)
        self.double()

    def forward(self, tokens, positions, mask):
        h = self.tok(tokens) + self.pos(positions)
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["n1"](h)).chunk(3, dim=-1)
            h = h + torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            h = h + torch.tanh(layer["mlp"](layer["n2"](h)))
        return self.head(h)


V, L = 9, 12


def bd_logits(model, xt, x0, block_size, docs=None):
    mask = M.block_diffusion_mask(L, block_size, docs)
    pos = torch.cat([torch.arange(L), torch.arange(L)])
    return model(torch.cat([xt, x0], dim=1), pos, mask)[:, :L]


def test_block_size_L_equals_mdlm():
    model = ToyModel(V, L)
    g = gen(11)
    x0 = torch.randint(0, V, (3, L), generator=g)
    docs = torch.tensor([[0] * 5 + [1] * 7, [0] * 12, [0] * 3 + [1] * 3 + [2] * 6])
    cfg = N.NoiseConfig(sampling="antithetic")
    noise = N.apply_noise(x0, N.sample_t(3, 1, cfg, g), V, None, g)
    with torch.no_grad():
        for d in (None, docs):
            mdlm = model(noise.xt, torch.arange(L), M.bidirectional_mask(L, d))
            bd = bd_logits(model, noise.xt, x0, L, d)
            torch.testing.assert_close(bd, mdlm, rtol=1e-12, atol=1e-12)
            losses = [LO.diffusion_loss(LO.per_token_cross_entropy(lg, x0), noise.noise_mask,
                                        noise.t_per_token, weighting="inv_t", normalization="all_tokens")
                      for lg in (bd, mdlm)]
            assert math.isclose(losses[0].loss_sum.item(), losses[1].loss_sum.item(), rel_tol=1e-6)


def test_block_size_1_with_t_1_is_no_shift_ar():
    model = ToyModel(V, L, seed=1)
    x0 = torch.randint(0, V, (2, L), generator=gen(12))
    docs = torch.tensor([0] * 4 + [1] * 8)
    t = torch.ones(2)
    noise = N.apply_noise(x0, t, V, None, gen(13))
    assert noise.noise_mask.all()
    with torch.no_grad():
        for d in (None, docs):
            logits = bd_logits(model, noise.xt, x0, 1, d)
            out = LO.diffusion_loss(LO.per_token_cross_entropy(logits, x0), noise.noise_mask,
                                    noise.t_per_token, weighting="inv_t", normalization="all_tokens")
            # reference: for each i, a causal run on (earlier clean tokens of i's document, [MASK]),
            # read at the [MASK] slot and scored against x0_i (no shift)
            ref = 0.0
            for b in range(2):
                for i in range(L):
                    prev = [j for j in range(i) if d is None or d[j] == d[i]]
                    toks = torch.tensor([[int(x0[b, j]) for j in prev] + [V]])
                    pos = torch.tensor(prev + [i])
                    n = len(prev) + 1
                    lg = model(toks, pos, torch.ones(n, n, dtype=torch.bool).tril())[0, -1]
                    ref += float(-(torch.log_softmax(lg, 0)[x0[b, i]]))
            assert math.isclose(out.loss_sum.item(), ref, rel_tol=1e-6)
            assert out.num_tokens.item() == 2 * L


@pytest.mark.parametrize("block_size", [2, 3, 4, 6])
def test_bd_layout_equals_per_block_reference(block_size):
    # block k of the BD run = a block-causal run on (clean blocks < k, noisy block k)
    model = ToyModel(V, L, seed=2)
    g = gen(14)
    x0 = torch.randint(0, V, (2, L), generator=g)
    noise = N.apply_noise(x0, torch.tensor([0.5, 0.8]), V, None, g)
    with torch.no_grad():
        bd = bd_logits(model, noise.xt, x0, block_size)
        for k in range(L // block_size):
            s, e = k * block_size, (k + 1) * block_size
            toks = torch.cat([x0[:, :s], noise.xt[:, s:e]], 1)
            ref = model(toks, torch.arange(e), M.block_causal_mask(e, block_size))[:, s:e]
            torch.testing.assert_close(bd[:, s:e], ref, rtol=1e-12, atol=1e-12)
