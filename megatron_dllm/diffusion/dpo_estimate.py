"""The DPO loss of a batch of pairs from two scoring callables, and its variance over noise draws.

This is the reference form of one DPO step's loss (noise -> noised rows -> per-token log-probs ->
ELBOs -> DPO), written for any model that maps noised rows to log-probs; the training step does the
same with Megatron models. ``loss_variance`` repeats it over R independent noise draws (iterations
0..R-1) with the model fixed, which measures the variance of the DPO loss estimate that a noise
allocation (``vrpo.ElboSampling``) gives: the quantity VRPO reduces.

A scorer is a callable ``score(xt, targets) -> log-probs``: xt and targets [N, L] long, the result
[N, L] float, log p(targets[r, i] | xt[r]) at every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .likelihood import elbo
from .preference import DpoOutput, dpo_loss
from .vrpo import DrawNoise, ElboSampling, noised_draws, preference_noise

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PreferenceBatch:
    """P preference pairs laid out as rows (prompt first, then the response, padded).

    Attributes:
        chosen: [P, Lw] long. rejected: [P, Ll] long.
        chosen_mask, rejected_mask: bool like chosen / rejected, True on response positions.
        pair_indices: P global pair indices (they seed the noise).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_mask: torch.Tensor
    pair_indices: Sequence[int]


def sequence_elbo(score: Scorer, x0: torch.Tensor, response_mask: torch.Tensor, noise: DrawNoise,
                  mask_token_id: int) -> torch.Tensor:
    """ELBO estimate [P] of rows x0 [P, L] under ``score`` with the given noise (one forward of P*n rows)."""
    draws = noised_draws(x0, response_mask, noise, mask_token_id)
    P, n, L = draws.xt.shape
    targets = x0[:, None, :].expand(P, n, L).reshape(P * n, L)
    logp = score(draws.xt.reshape(P * n, L), targets)
    if tuple(logp.shape) != (P * n, L):
        raise ValueError(f"scorer returned shape {tuple(logp.shape)}, expected {(P * n, L)}")
    return elbo(logp.view(P, n, L), draws.noise_mask, draws.t, response_mask)


def dpo_estimate(policy: Scorer, reference: Scorer, batch: PreferenceBatch, sampling: ElboSampling,
                 beta: float, mask_token_id: int, seed: int, iteration: int) -> DpoOutput:
    """Per-pair DPO loss and metrics of a batch with the noise of (seed, pair index, iteration)."""
    seq_len = max(batch.chosen.shape[1], batch.rejected.shape[1])
    noise = preference_noise(batch.pair_indices, seq_len, sampling, seed, iteration)
    b = {}
    for model_name, model in (("policy", policy), ("reference", reference)):
        for side, x0, mask in (("chosen", batch.chosen, batch.chosen_mask),
                               ("rejected", batch.rejected, batch.rejected_mask)):
            role = f"{model_name}_{side}"
            b[role] = sequence_elbo(model, x0, mask, getattr(noise, role), mask_token_id)
    return dpo_loss(b["policy_chosen"], b["policy_rejected"], b["reference_chosen"],
                    b["reference_rejected"], beta)


@dataclass(frozen=True)
class LossVariance:
    """The batch-mean DPO loss over R noise draws.

    Attributes:
        losses: [R] float64, the batch-mean loss of each draw.
        mean: their mean. variance: their unbiased variance (ddof 1).
    """

    losses: torch.Tensor
    mean: float
    variance: float


def loss_variance(policy: Scorer, reference: Scorer, batch: PreferenceBatch, sampling: ElboSampling,
                  beta: float, mask_token_id: int, repeats: int, seed: int = 0) -> LossVariance:
    """Variance of the batch-mean DPO loss estimate over ``repeats`` >= 2 noise draws (no grad).

    Draw r uses iteration r, so every draw is independent and the result is deterministic.
    """
    if repeats < 2:
        raise ValueError(f"loss_variance: repeats must be >= 2 to estimate a variance, got {repeats}")
    with torch.no_grad():
        losses = torch.stack([
            dpo_estimate(policy, reference, batch, sampling, beta, mask_token_id, seed, r).loss.double()
            .mean() for r in range(repeats)])
    return LossVariance(losses=losses, mean=float(losses.mean()), variance=float(losses.var()))


def variance_ratio(baseline: LossVariance, improved: LossVariance) -> float:
    """baseline.variance / improved.variance; inf when the improved variance is exactly 0."""
    if improved.variance == 0.0:
        return float("inf")
    return baseline.variance / improved.variance


def variance_ratio_interval(baseline: LossVariance, improved: LossVariance, level: float = 0.9,
                            resamples: int = 2000, seed: int = 0) -> tuple:
    """Percentile bootstrap interval (lo, hi) of ``variance_ratio`` at confidence ``level``.

    Each resample draws R losses with replacement from each side. The 1/t weight makes ELBO
    estimates heavy-tailed (rare draws with a small t), so a variance from R draws is less certain
    than the Gaussian sqrt(2 / (R - 1)) suggests; this interval does not assume normality.
    Deterministic for a given seed; (inf, inf) when the improved variance is exactly 0.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"variance_ratio_interval: level must be in (0, 1), got {level}")
    if improved.variance == 0.0:
        return float("inf"), float("inf")
    gen = torch.Generator().manual_seed(seed)
    ratios = []
    for _ in range(resamples):
        a = baseline.losses[torch.randint(0, len(baseline.losses), (len(baseline.losses),), generator=gen)]
        b = improved.losses[torch.randint(0, len(improved.losses), (len(improved.losses),), generator=gen)]
        ratios.append(float(a.var()) / max(float(b.var()), 1e-300))
    q = torch.tensor(ratios, dtype=torch.float64).quantile(
        torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])
