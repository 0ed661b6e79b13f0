"""Masked-diffusion losses (METHOD.md 2.2, 2.4, 2.5, 6.4), reduced to (sum, count).

The caller supplies the per-token cross-entropy ``[B, L]`` (fp32), so Megatron's vocab-parallel
cross-entropy can feed it without gathering logits; ``per_token_cross_entropy`` is the plain
reference for CPU and tests. Everything is batch-first. Loss is taken only where the token was
noised (``noise_mask``) and may carry loss (``loss_mask``): the noisy half of the BD layout, never
the clean half, never unmasked tokens (METHOD.md 6.5).

Weighting w: ``"inv_t"`` (the ELBO weight 1/t of the linear schedule) or ``"none"`` (dFactory SFT).
Normalisation, as ``loss = loss_sum / num_tokens``:

* ``"all_tokens"``: sum_noised w*ce / #loss_mask tokens (LLaDA pre-training; unbiased per-token NELBO).
* ``"masked_tokens"``: sum_noised w*ce / #noised tokens (dFactory, the released LLaDA2.0 SFT code).
* ``"sequence"``: per row, sum_noised w*ce / #loss_mask tokens of the row; ``loss_sum`` is the sum of
  these over rows and ``num_tokens`` the number of rows that have a loss_mask token (LLaDA SFT).

Returning the sum and the count lets Megatron normalise over micro-batches and data-parallel ranks.
Labels are the clean tokens at the same positions (no shift, DESIGN.md decision 8); ``label_shift``
moves targets and masks one to the left for the AR-aligned variant (Dream / DiffuLLaMA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

WEIGHTINGS = ("inv_t", "none")
NORMALIZATIONS = ("all_tokens", "masked_tokens", "sequence")


@dataclass(frozen=True)
class LossOutput:
    """A reduced loss and what to log.

    Attributes:
        loss_sum: 0-dim float32 with grad; the loss is ``loss_sum / num_tokens``.
        num_tokens: 0-dim int64, the denominator for the chosen normalisation.
        num_noised: 0-dim int64, positions that carried loss (noised and in loss_mask).
        correct: 0-dim int64, of those, positions whose prediction equals the target; None when
            no predictions were passed. Accuracy = correct / num_noised.
        bucket_loss_sum: [n_buckets] float32, unweighted CE summed over noised tokens whose t falls
            in bucket k = (k/n, (k+1)/n]; detached, for logging. None when num_buckets=0 (ar_loss).
        bucket_count: [n_buckets] int64, tokens in each bucket (None when num_buckets=0).
    """

    loss_sum: torch.Tensor
    num_tokens: torch.Tensor
    num_noised: torch.Tensor
    correct: Optional[torch.Tensor] = None
    bucket_loss_sum: Optional[torch.Tensor] = None
    bucket_count: Optional[torch.Tensor] = None

    def mean(self) -> torch.Tensor:
        """loss_sum / max(num_tokens, 1): the normalised loss of this batch alone."""
        return self.loss_sum / self.num_tokens.clamp(min=1).to(self.loss_sum.dtype)


class ShiftedLabels(NamedTuple):
    """Targets and masks moved one position to the left (AR alignment), all [B, L]."""

    targets: torch.Tensor
    noise_mask: torch.Tensor
    t_per_token: torch.Tensor
    loss_mask: Optional[torch.Tensor]


def per_token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference fp32 cross-entropy: logits [B, L, V] (any float dtype), targets [B, L] -> [B, L]."""
    B, L, V = logits.shape
    ce = F.cross_entropy(logits.float().reshape(B * L, V), targets.reshape(B * L), reduction="none")
    return ce.view(B, L)


def _as_bool(mask: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    return mask.to(device=like.device, dtype=torch.bool)


def t_buckets(t: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket index of t for ``num_buckets`` equal buckets on (0, 1]: k with k/n < t <= (k+1)/n.

    Edges are compared in float32 (a t stored as float32(0.4) lies in the bucket ending at 0.4).
    """
    edges = torch.tensor([k / num_buckets for k in range(1, num_buckets)], dtype=torch.float32,
                         device=t.device)
    return torch.bucketize(t.float().contiguous(), edges, right=False)


def diffusion_loss(per_token_ce: torch.Tensor, noise_mask: torch.Tensor, t_per_token: torch.Tensor,
                   loss_mask: Optional[torch.Tensor] = None, *, weighting: str = "none",
                   normalization: str = "masked_tokens", predictions: Optional[torch.Tensor] = None,
                   targets: Optional[torch.Tensor] = None, num_buckets: int = 5) -> LossOutput:
    """Cross-entropy at noised positions, weighted and reduced to (sum, count).

    Args:
        per_token_ce: [B, L] float, -log p(x0_i | xt) at every position of the noisy half
            (values off the noise mask are ignored, even if not finite).
        noise_mask: [B, L] bool, positions replaced by the mask token.
        t_per_token: [B, L] float, the t each position was noised with (> 0 where noised).
        loss_mask: [B, L] bool or None (all positions may carry loss).
        weighting: "inv_t" or "none" (module docstring). Default "none" + "masked_tokens" is the
            released LLaDA2.0 SFT recipe (METHOD.md 2.4).
        normalization: "all_tokens", "masked_tokens" or "sequence" (module docstring).
        predictions: [B, L] long argmax predictions, optional, for the masked-token accuracy.
        targets: [B, L] long targets, required with ``predictions``.
        num_buckets: number of equal t-buckets on (0, 1] for logging (0 to skip).

    Returns:
        LossOutput (0-dim sums and counts; buckets [num_buckets]).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if predictions is not None and targets is None:
        raise ValueError("diffusion_loss: predictions need targets to count correct tokens")
    ce = per_token_ce.float()
    lm = _as_bool(loss_mask, ce)
    sel = noise_mask.to(torch.bool) & lm
    t = t_per_token.to(device=ce.device, dtype=torch.float32)
    if weighting == "inv_t":
        weight = 1.0 / torch.where(sel, t, torch.ones_like(t))  # never divides by t off the mask
        contrib = torch.where(sel, ce * weight, torch.zeros_like(ce))
    else:
        contrib = torch.where(sel, ce, torch.zeros_like(ce))
    num_noised = sel.sum()
    if normalization == "sequence":
        row_len = lm.sum(dim=1)
        loss_sum = (contrib.sum(dim=1) / row_len.clamp(min=1)).sum()
        num_tokens = (row_len > 0).sum()
    else:
        loss_sum = contrib.sum()
        num_tokens = lm.sum() if normalization == "all_tokens" else num_noised
    correct = None
    if predictions is not None:
        correct = ((predictions == targets.to(predictions.device)) & sel).sum()
    bucket_loss_sum = bucket_count = None
    if num_buckets > 0:
        idx = t_buckets(t, num_buckets).flatten()
        masked_ce = torch.where(sel, ce.detach(), torch.zeros_like(ce)).flatten()
        bucket_loss_sum = torch.zeros(num_buckets, dtype=torch.float32, device=ce.device)
        bucket_loss_sum = bucket_loss_sum.index_add(0, idx, masked_ce)
        bucket_count = torch.zeros(num_buckets, dtype=torch.int64, device=ce.device)
        bucket_count = bucket_count.index_add(0, idx, sel.flatten().long())
    return LossOutput(loss_sum=loss_sum, num_tokens=num_tokens, num_noised=num_noised,
                      correct=correct, bucket_loss_sum=bucket_loss_sum, bucket_count=bucket_count)


def label_shift(targets: torch.Tensor, noise_mask: torch.Tensor, t_per_token: torch.Tensor,
                loss_mask: Optional[torch.Tensor] = None, fill_token: int = 0) -> ShiftedLabels:
    """AR-aligned labels (``--dllm-label-shift``, Dream / DiffuLLaMA): the logit at i predicts x0_{i+1}.

    Every [B, L] input moves one position left (out[:, i] = in[:, i + 1]); the last column gets
    ``fill_token``, noise_mask False, t 1 and loss_mask False, so it carries no loss. Feed the
    result to the cross-entropy (targets) and to ``diffusion_loss`` (masks, t) unchanged.
    Token 0 of a row is never a target, as in DiffuLLaMA's ``logits[:, :-1]`` vs ``x0[:, 1:]``.
    """

    def shift(x: torch.Tensor, fill) -> torch.Tensor:
        return torch.cat([x[:, 1:], torch.full_like(x[:, :1], fill)], dim=1)

    shifted_loss_mask = None if loss_mask is None else shift(loss_mask.to(torch.bool), False)
    return ShiftedLabels(targets=shift(targets, fill_token),
                         noise_mask=shift(noise_mask.to(torch.bool), False),
                         t_per_token=shift(t_per_token, 1.0), loss_mask=shifted_loss_mask)


def ar_loss(logits: torch.Tensor, tokens: torch.Tensor,
            loss_mask: Optional[torch.Tensor] = None) -> LossOutput:
    """Next-token cross-entropy of the AR baseline: logits [B, L, V] at i predict tokens[:, i + 1].

    ``loss_mask`` [B, L] says which tokens may be targets. Returns LossOutput with the sum over
    targets, num_tokens = number of targets, and the accuracy of the argmax.
    """
    shifted = label_shift(tokens, torch.ones_like(tokens, dtype=torch.bool),
                          torch.ones(tokens.shape, dtype=torch.float32, device=tokens.device),
                          loss_mask)
    ce = per_token_cross_entropy(logits, shifted.targets)
    return diffusion_loss(ce, shifted.noise_mask, shifted.t_per_token, shifted.loss_mask,
                          weighting="none", normalization="masked_tokens",
                          predictions=logits.argmax(dim=-1), targets=shifted.targets, num_buckets=0)


@dataclass(frozen=True)
class CapOutput:
    """CAP confidence term: ``loss_sum / num_tokens`` is lambda * mean entropy (0 if no token).

    Attributes:
        loss_sum: 0-dim float32 with grad, lambda * sum of entropies over the selected tokens.
        num_tokens: 0-dim int64, noised tokens whose argmax equals the target.
    """

    loss_sum: torch.Tensor
    num_tokens: torch.Tensor

    def mean(self) -> torch.Tensor:
        """lambda * mean entropy over the selected tokens; exactly 0 when there are none."""
        return self.loss_sum / self.num_tokens.clamp(min=1).to(self.loss_sum.dtype)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy -sum_v p log p in fp32: logits [B, L, V] -> [B, L]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def cap_loss(per_token_entropy: torch.Tensor, correct_mask: torch.Tensor, noise_mask: torch.Tensor,
             weight: float, loss_mask: Optional[torch.Tensor] = None) -> CapOutput:
    """CAP term (METHOD.md 6.4) from per-token entropy [B, L] and correctness [B, L] bool.

    Selects noised (and loss_mask) positions whose argmax prediction equals the target; the
    gradient flows through the entropy, as in dFactory. Total loss: L_SFT + cap.mean().
    """
    sel = noise_mask.to(torch.bool) & correct_mask.to(torch.bool) & _as_bool(loss_mask, noise_mask)
    ent = per_token_entropy.float()
    ent_sum = torch.where(sel, ent, torch.zeros_like(ent)).sum()
    return CapOutput(loss_sum=weight * ent_sum, num_tokens=sel.sum())


def cap_entropy_loss(logits: torch.Tensor, targets: torch.Tensor, noise_mask: torch.Tensor,
                     weight: float, loss_mask: Optional[torch.Tensor] = None) -> CapOutput:
    """``cap_loss`` from full logits [B, L, V] and targets [B, L] (reference / non-parallel path)."""
    correct = logits.argmax(dim=-1) == targets
    return cap_loss(token_entropy(logits), correct, noise_mask, weight, loss_mask)
