"""Monte-Carlo ELBO of log p(y | prompt) for a masked diffusion model (LLaDA 1.5, METHOD.md 7.2-7.3).

For a response y (the loss-mask positions of a row: response tokens and their EOS padding) and n
noise draws d = 1..n, each with a time t_d in (0, 1] and a noise mask m_d (the response positions
replaced by [MASK] in draw d), the estimate is

    B_hat(y | x) = (1/n) * sum_d (1/t_d) * sum_{i in response} m_d[i] * log p(y_i | y_t^(d), x)

which is unbiased for the per-sample ELBO B(y | x) = E_t E_{y_t}[(1/t) sum_i 1[y_t^i = M] log p(y^i |
y_t, x)] <= log p(y | x) when t ~ U(0, 1] and each response token is masked with probability t
(LLaDA 1.5, eq. for B_pi; the sign makes it a lower bound on the log-likelihood, METHOD.md 13).

Normalisation: none. B_hat is a sum over response tokens, like the summed log-probabilities of AR
DPO and LLaDA 1.5's B_pi; a longer response has a larger |B_hat|. Padding EOS positions count as
response tokens exactly when the caller puts them in the response mask.

The caller scores every draw as one row: log-probs [P, n, L] of the clean tokens at every position
of the noised rows (the noisy half of the BD layout). Values off the noise mask are ignored, even
if not finite.
"""

from __future__ import annotations

from typing import Optional

import torch


def check_t(t: torch.Tensor, name: str = "t") -> None:
    """Raise ValueError unless every value of a CPU tensor t lies in (0, 1].

    Only CPU tensors are checked (the noise plans draw t on the CPU); checking an accelerator
    tensor would synchronise with the device, so it is skipped.
    """
    if t.device.type != "cpu" or t.numel() == 0:
        return
    bad = (t <= 0) | (t > 1) | torch.isnan(t)
    if bad.any():
        value = float(t[bad].flatten()[0])
        raise ValueError(f"{name} must lie in (0, 1] (the ELBO weight is 1/t), got {value:g}")


def elbo(token_logprob: torch.Tensor, noise_mask: torch.Tensor, t: torch.Tensor,
         response_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sequence ELBO estimate B_hat [P] from n noise draws per sequence (module docstring).

    Args:
        token_logprob: [P, n, L] float, log p(clean token | noised draw) at every position
            (for example ``-per_token_cross_entropy``); may carry grad.
        noise_mask: [P, n, L] bool, positions masked in each draw.
        t: [P, n] float in (0, 1], the time of each draw (checked when on the CPU).
        response_mask: [P, L] bool or None; when given, only these positions count (a noise mask
            that strays onto the prompt is ignored there).

    Returns:
        [P] float32: (1/n) sum_d (1/t_d) sum_i noise_mask[p, d, i] * token_logprob[p, d, i].
    """
    if token_logprob.dim() != 3:
        raise ValueError(f"elbo: token_logprob must be [P, n, L], got shape {tuple(token_logprob.shape)}")
    P, n, L = token_logprob.shape
    if tuple(noise_mask.shape) != (P, n, L):
        raise ValueError(f"elbo: noise_mask has shape {tuple(noise_mask.shape)}, expected {(P, n, L)} "
                         f"like token_logprob")
    if tuple(t.shape) != (P, n):
        raise ValueError(f"elbo: t has shape {tuple(t.shape)}, expected {(P, n)} (one t per draw)")
    if response_mask is not None and tuple(response_mask.shape) != (P, L):
        raise ValueError(f"elbo: response_mask has shape {tuple(response_mask.shape)}, expected {(P, L)}")
    check_t(t)
    logp = token_logprob.float()
    sel = noise_mask.to(device=logp.device, dtype=torch.bool)
    if response_mask is not None:
        sel = sel & response_mask.to(device=logp.device, dtype=torch.bool)[:, None, :]
    per_draw = torch.where(sel, logp, torch.zeros_like(logp)).sum(dim=2)  # [P, n]
    weight = 1.0 / t.to(device=logp.device, dtype=torch.float32)
    return (per_draw * weight).sum(dim=1) / n
