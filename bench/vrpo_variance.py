"""Variance of the DPO loss estimate: VRPO vs naive noise (issue 15 goal: >= 5x lower with VRPO).

A fixed tiny bidirectional transformer (pure torch) is trained for 100 steps with the
masked-diffusion SFT loss on a reversal task (prompt: k digits and SEP; response: the digits
reversed, then EOS padding; the padding is supervised and part of the response), so its
predictions depend on the context but are not yet certain. That model is the reference. Policies:
the reference itself (a check), copies whose parameters are perturbed by ``perturbation`` x (the
parameter tensor's std) x N(0, 1), and the reference after ``--dpo-steps`` DPO steps (VRPO, n = 1)
on fresh pairs: the realistic regime (preference accuracy and margin well above chance). A fixed
batch of pairs has chosen = the right response and rejected = a near miss (one digit changed, or
one digit dropped, so the two responses differ in length).

For each number of draws n (n timesteps x 1 mask) and each noise sampling, the batch-mean DPO loss
(beta 0.1) is estimated R times with independent noise (iterations 0..R-1) and its variance is
reported (``diffusion.dpo_estimate.loss_variance``), with a bootstrap interval of the ratio.
Samplings (``diffusion.vrpo``):

    naive          iid t, independent noise for each of the four ELBO estimates
    +stratified    stratified t, noise still independent
    +shared_ref    stratified t, policy and reference share (t, masks); pair not shared
    vrpo           stratified t, shared by policy / reference and by chosen / rejected

With perturbation 0 (policy == reference) VRPO's shared noise makes B_pi - B_ref exactly 0, so its
variance is exactly 0: a trivial result, shown as a check only; the ratio that matters is the one
with the policy away from the reference.

    python bench/vrpo_variance.py                     # defaults below; ~2 min on one core
    python bench/vrpo_variance.py --repeats 200 --perturbations 0,0.01,0.03,0.1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_dllm.diffusion import dpo_estimate as DE  # noqa: E402
from megatron_dllm.diffusion import vrpo as VR  # noqa: E402

DIGITS, SEP, EOS, MASK = 10, 10, 11, 12
VOCAB = 13
MAX_K = 8
SEQ = 2 * MAX_K + 2  # prompt (k) + SEP + response (k) + EOS padding, at least one EOS

SAMPLINGS = {
    "naive": lambda n: VR.naive(n),
    "+stratified": lambda n: VR.ElboSampling(timesteps=n, share_reference=False, share_pair=False),
    "+shared_ref": lambda n: VR.ElboSampling(timesteps=n, share_pair=False),
    "vrpo": lambda n: VR.vrpo(n),
}


class TinyBidirectional(nn.Module):
    """Token + position embeddings, a pre-norm bidirectional transformer encoder, a linear head."""

    def __init__(self, d: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(SEQ, d)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        h = self.tok(xt) + self.pos(torch.arange(xt.shape[1], device=xt.device))[None]
        return self.head(self.encoder(h))


def make_row(prompt: list, response: list) -> tuple:
    """(tokens [SEQ], response mask [SEQ]): prompt SEP response EOS..., mask on response + EOS."""
    row = prompt + [SEP] + response
    row = row + [EOS] * (SEQ - len(row))
    mask = [False] * (len(prompt) + 1) + [True] * (SEQ - len(prompt) - 1)
    return row, mask


def sample_rows(count: int, gen: torch.Generator) -> tuple:
    """``count`` correct rows of the reversal task: tokens and response masks [count, SEQ]."""
    rows, masks = [], []
    for _ in range(count):
        k = int(torch.randint(3, MAX_K + 1, (1,), generator=gen))
        prompt = torch.randint(0, DIGITS, (k,), generator=gen).tolist()
        row, mask = make_row(prompt, prompt[::-1])
        rows.append(row)
        masks.append(mask)
    return torch.tensor(rows), torch.tensor(masks)


def train_reference(steps: int, batch: int, seed: int) -> tuple:
    """Train TinyBidirectional with the masked-diffusion SFT loss; returns (model, final loss)."""
    torch.manual_seed(seed)
    model = TinyBidirectional()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x0, rm = sample_rows(batch, gen)
        t = torch.rand(batch, 1, generator=gen) * 0.999 + 0.001
        masked = (torch.rand(batch, SEQ, generator=gen) < t) & rm
        xt = torch.where(masked, torch.full_like(x0, MASK), x0)
        ce = nn.functional.cross_entropy(model(xt).transpose(1, 2), x0, reduction="none")
        loss = (ce * masked / t).sum() / rm.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, float(loss.detach())


def perturbed(model: nn.Module, scale: float, seed: int) -> nn.Module:
    """A copy of model with every parameter p += scale * std(p) * N(0, 1)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            std = float(p.std()) if p.numel() > 1 else 1.0
            p.add_(scale * std * torch.randn(p.shape, generator=gen))
    return out


def scorer(model: nn.Module, grad: bool = False):
    """log p(targets | xt) per position, [N, L], as ``dpo_estimate`` expects."""

    def score(xt: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            logp = torch.log_softmax(model(xt).float(), dim=-1)
        return logp.gather(-1, targets[..., None])[..., 0]

    return score


def dpo_trained(reference: nn.Module, steps: int, pairs: int, beta: float, seed: int) -> nn.Module:
    """A copy of reference trained ``steps`` DPO steps (VRPO, n = 1) on fresh pairs of the task.

    Each step is the package's reference form of a DPO step (``dpo_estimate``: noise plan, noised
    rows, per-token log-probs, ELBOs, DPO loss) with the policy scored under grad.
    """
    torch.manual_seed(seed)
    policy = copy.deepcopy(reference)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    pol, ref = scorer(policy, grad=True), scorer(reference)
    for it in range(steps):
        batch = preference_batch(pairs, seed + 1000 + it, first_index=10_000 + it * pairs)
        out = DE.dpo_estimate(pol, ref, batch, VR.vrpo(1), beta, MASK, seed, it)
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
    policy.eval()
    return policy


def preference_batch(pairs: int, seed: int, first_index: int = 0) -> DE.PreferenceBatch:
    """Chosen = right reversal; rejected = one digit changed (even pairs) or dropped (odd pairs)."""
    gen = torch.Generator().manual_seed(seed)
    chosen, cmask, rejected, rmask = [], [], [], []
    for p in range(pairs):
        k = int(torch.randint(4, MAX_K + 1, (1,), generator=gen))
        prompt = torch.randint(0, DIGITS, (k,), generator=gen).tolist()
        right = prompt[::-1]
        j = int(torch.randint(0, k, (1,), generator=gen))
        if p % 2 == 0:
            wrong = list(right)
            wrong[j] = (wrong[j] + 1 + int(torch.randint(0, DIGITS - 1, (1,), generator=gen))) % DIGITS
        else:
            wrong = right[:j] + right[j + 1:]
        for rows, masks, resp in ((chosen, cmask, right), (rejected, rmask, wrong)):
            row, mask = make_row(prompt, resp)
            rows.append(row)
            masks.append(mask)
    return DE.PreferenceBatch(chosen=torch.tensor(chosen), rejected=torch.tensor(rejected),
                              chosen_mask=torch.tensor(cmask), rejected_mask=torch.tensor(rmask),
                              pair_indices=list(range(first_index, first_index + pairs)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", default="1,4,8", help="comma-separated n (timesteps, 1 mask each)")
    ap.add_argument("--perturbations", default="0,0.03", help="comma-separated policy perturbations")
    ap.add_argument("--repeats", type=int, default=100, help="R noise draws per variance")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--train-steps", type=int, default=100, help="SFT steps of the reference")
    ap.add_argument("--dpo-steps", type=int, default=20, help="also a DPO-trained policy (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this path")
    args = ap.parse_args(argv)
    try:
        draws = [int(x) for x in args.draws.split(",")]
        perts = [float(x) for x in args.perturbations.split(",")]
    except ValueError:
        print("error: --draws takes integers and --perturbations numbers, comma-separated "
              "(e.g. --draws 1,4,8 --perturbations 0,0.03)", file=sys.stderr)
        return 2
    if args.repeats < 2 or args.pairs < 1 or min(draws) < 1:
        print("error: --repeats must be >= 2, --pairs >= 1 and every --draws value >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start = time.time()
    reference, train_loss = train_reference(args.train_steps, 64, args.seed)
    batch = preference_batch(args.pairs, args.seed + 7)
    print(f"reference: TinyBidirectional trained {args.train_steps} steps (final SFT NELBO/token "
          f"{train_loss:.3f}); {args.pairs} pairs, L = {SEQ}, beta = {args.beta}, R = {args.repeats}")
    policies = [(f"reference + {p} x std x N(0,1)" if p else "reference (policy == reference)",
                 reference if p == 0 else perturbed(reference, p, args.seed + 11)) for p in perts]
    if args.dpo_steps:
        policies.append((f"reference after {args.dpo_steps} DPO steps (VRPO n=1, fresh pairs)",
                         dpo_trained(reference, args.dpo_steps, args.pairs, args.beta, args.seed + 13)))
    results = []
    for label, policy in policies:
        pol, ref = scorer(policy), scorer(reference)
        big = DE.dpo_estimate(pol, ref, batch, VR.vrpo(64), args.beta, MASK, args.seed + 1, 0)
        print(f"\npolicy = {label}: margin (n = 64 VRPO) mean "
              f"{float(big.margin.mean()):+.4f}, mean |margin| {float(big.margin.abs().mean()):.4f}, "
              f"accuracy {float(big.correct.mean()):.2f}, kl(k2) {float(big.kl.mean()):.4f}")
        if policy is reference:
            print("  policy == reference: VRPO's shared noise cancels exactly (variance 0 by "
                  "construction); a check, not the result")
        print(f"  {'n':>3} {'sampling':<12} {'mean loss':>10} {'variance':>11} {'naive / this':>13} "
              f"{'90% bootstrap':>19}")
        for n in draws:
            est = {name: DE.loss_variance(pol, ref, batch, make(n), args.beta, MASK, args.repeats,
                                          seed=args.seed + 1) for name, make in SAMPLINGS.items()}
            for name, v in est.items():
                ratio = DE.variance_ratio(est["naive"], v)
                lo, hi = DE.variance_ratio_interval(est["naive"], v, seed=args.seed)
                print(f"  {n:>3} {name:<12} {v.mean:>10.4f} {v.variance:>11.3e} {ratio:>12.1f}x "
                      f"{lo:>8.1f}x - {hi:.1f}x")
                finite = not math.isinf(ratio)
                results.append({"policy": label, "n": n, "sampling": name, "mean_loss": v.mean,
                                "variance": v.variance, "ratio_vs_naive": ratio if finite else None,
                                "ratio_90": [lo, hi] if finite else None})
    print(f"\nratios: naive variance / this variance at the same n; the interval is a percentile "
          f"bootstrap over the R draws (the 1/t weight makes the loss heavy-tailed, so it is wider "
          f"than the Gaussian ~{math.sqrt(2 / (args.repeats - 1)):.0%} per variance); "
          f"{time.time() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "train_loss": train_loss, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
