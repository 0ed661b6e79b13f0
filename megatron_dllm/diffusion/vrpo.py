"""Noise of the DPO ELBO estimates: VRPO (LLaDA 1.5, METHOD.md 7.3) and the naive alternative.

A DPO step needs four ELBO estimates per pair (``likelihood.elbo``): policy and reference, each on
the chosen and the rejected response. Each uses n = n_t * n_yt noise draws: n_t times t_j, and
n_yt masks per time (draw d = j * n_yt + k has t_j). ``ElboSampling`` says how they are drawn:

* ``timesteps`` n_t, ``masks_per_timestep`` n_yt: VRPO's optimal allocation is n_t = n, n_yt = 1.
* ``stratify_t``: t_j = eps + (1 - eps) * (j + v_j) / n_t with jitters v_j ~ U[0, 1) (one draw per
  stratum of [eps, 1), so the n_t times cover the range evenly); otherwise t_j iid U[eps, 1).
* ``share_reference``: the reference scores the same noised rows (same t and masks) as the policy,
  so the noise cancels in B_pi - B_ref where the two models agree (VRPO's antithetic sampling).
* ``share_pair``: the chosen and rejected responses use the same t's and the same uniform per
  (draw, position index); position i of both rows is masked iff u[d, i] < t_d. The two responses
  differ in length; with a shared prompt laid out first they start at the same index, so response
  offset k sees the same uniform in both.

``vrpo(n)`` sets all three; ``naive(n)`` none (independent iid noise for each of the four
estimates). Every draw of pair p comes from ``noise_generator(seed, pair_index, iteration)``, one
generator per pair in a fixed order (for each independent noise source: t jitters, then the
[n, L] uniforms), so every TP / PP rank that holds the pair draws the same noise without
communication, and the noise of a pair depends on nothing but (seed, pair index, iteration), the
sampling and L. Draws happen on the CPU.

Reference ELBOs cached per pair (instead of a reference forward every step) keep VRPO's
cancellation only if the policy sees the noise the cache was computed with: draw with a fixed
iteration (e.g. 0, or the epoch) for both. All n draws and both responses of a pair must reach the
DPO loss together (it is non-linear in the ELBOs), so a micro-batch holds whole pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence, Union

import torch

from .seeding import noise_generator

ROLES = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")


@dataclass(frozen=True)
class ElboSampling:
    """How the n = timesteps * masks_per_timestep noise draws of the ELBO estimates are made.

    Attributes:
        timesteps: n_t >= 1, times t per estimate.
        masks_per_timestep: n_yt >= 1, masks drawn at each time.
        eps: t lies in [eps, 1); in (0, 1).
        stratify_t: one t per stratum of [eps, 1) instead of iid (module docstring).
        share_reference: the reference uses the policy's noise.
        share_pair: the rejected response uses the chosen response's noise.
    """

    timesteps: int = 1
    masks_per_timestep: int = 1
    eps: float = 1e-3
    stratify_t: bool = True
    share_reference: bool = True
    share_pair: bool = True

    def __post_init__(self) -> None:
        if self.timesteps < 1 or self.masks_per_timestep < 1:
            raise ValueError(f"ElboSampling: timesteps and masks_per_timestep must be >= 1, got "
                             f"{self.timesteps} and {self.masks_per_timestep}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"ElboSampling.eps must be in (0, 1), got {self.eps}")

    @property
    def num_draws(self) -> int:
        """n = timesteps * masks_per_timestep, noised rows per response and model."""
        return self.timesteps * self.masks_per_timestep

    def source(self, role: str) -> int:
        """Index of the independent noise source a role draws from (0 for all roles under VRPO)."""
        r = ROLES.index(role)
        model = 0 if self.share_reference else r // 2
        response = 0 if self.share_pair else r % 2
        return model * (1 if self.share_pair else 2) + response

    @property
    def num_sources(self) -> int:
        """Independent noise sources per pair: 1 (VRPO) to 4 (naive)."""
        return (1 if self.share_reference else 2) * (1 if self.share_pair else 2)


def vrpo(n: int, eps: float = 1e-3) -> ElboSampling:
    """VRPO: n timesteps x 1 mask, stratified t, noise shared by policy / reference and by the pair."""
    return ElboSampling(timesteps=n, masks_per_timestep=1, eps=eps)


def naive(n: int, eps: float = 1e-3) -> ElboSampling:
    """Naive: n iid timesteps x 1 mask, independent noise for each of the four ELBO estimates."""
    return ElboSampling(timesteps=n, masks_per_timestep=1, eps=eps, stratify_t=False,
                        share_reference=False, share_pair=False)


@dataclass(frozen=True)
class DrawNoise:
    """The noise of one ELBO estimate for P sequences (CPU tensors).

    Attributes:
        t: [P, n] float32 in [eps, 1), the time of each draw.
        u: [P, n, L] float32 uniforms; position i of draw d is masked iff it is a response
            position and u[p, d, i] < t[p, d].
    """

    t: torch.Tensor
    u: torch.Tensor


@dataclass(frozen=True)
class PreferenceNoise:
    """The noise of the four ELBO estimates of a DPO batch (the same object where shared)."""

    policy_chosen: DrawNoise
    policy_rejected: DrawNoise
    reference_chosen: DrawNoise
    reference_rejected: DrawNoise


def _draw_source(sampling: ElboSampling, seq_len: int, gen: torch.Generator) -> tuple:
    """(t [n], u [n, L]) of one noise source from the pair's generator."""
    n_t = sampling.timesteps
    if sampling.stratify_t:
        jitter = torch.rand(n_t, generator=gen, dtype=torch.float64)
        v = (torch.arange(n_t, dtype=torch.float64) + jitter) / n_t
    else:
        v = torch.rand(n_t, generator=gen, dtype=torch.float64)
    t = (sampling.eps + (1.0 - sampling.eps) * v).float()
    t = t.repeat_interleave(sampling.masks_per_timestep)
    u = torch.rand(sampling.num_draws, seq_len, generator=gen)
    return t, u


def preference_noise(pair_indices: Union[Sequence[int], torch.Tensor], seq_len: int,
                     sampling: ElboSampling, seed: int, iteration: int) -> PreferenceNoise:
    """Draw the noise of the four ELBO estimates for P pairs (module docstring).

    Args:
        pair_indices: P global pair indices (ints or a 1-D CPU tensor).
        seq_len: L, the row length of the longer of the chosen / rejected tensors.
        sampling: the allocation and sharing (``vrpo(n)``, ``naive(n)`` or any ElboSampling).
        seed, iteration: the run seed and the training iteration.

    Returns:
        PreferenceNoise whose t are [P, n] and u [P, n, seq_len], all on the CPU.
    """
    if isinstance(pair_indices, torch.Tensor):
        pair_indices = pair_indices.tolist()
    pair_indices = [int(s) for s in pair_indices]
    if not pair_indices:
        raise ValueError("preference_noise: no pair indices")
    if seq_len < 1:
        raise ValueError(f"preference_noise: seq_len must be >= 1, got {seq_len}")
    per_source = [[] for _ in range(sampling.num_sources)]
    for s in pair_indices:
        gen = noise_generator(seed, s, iteration)
        for k in range(sampling.num_sources):
            per_source[k].append(_draw_source(sampling, seq_len, gen))
    sources = [DrawNoise(t=torch.stack([t for t, _ in draws]), u=torch.stack([u for _, u in draws]))
               for draws in per_source]
    return PreferenceNoise(**{role: sources[sampling.source(role)] for role in ROLES})


class NoisedDraws(NamedTuple):
    """The n noised copies of P rows: xt and noise_mask [P, n, L] (x0's device), t [P, n] (CPU)."""

    xt: torch.Tensor
    noise_mask: torch.Tensor
    t: torch.Tensor


def noised_draws(x0: torch.Tensor, response_mask: torch.Tensor, noise: DrawNoise,
                 mask_token_id: int) -> NoisedDraws:
    """Apply a DrawNoise to rows x0 [P, L] (L <= the noise's length): mask response positions.

    Args:
        x0: [P, L] long, clean rows (prompt then response, padded).
        response_mask: [P, L] bool, the positions that may be masked and are scored.
        noise: from ``preference_noise``; its first L uniforms per draw are used.
        mask_token_id: the [MASK] id.

    Returns:
        NoisedDraws on x0's device: noise_mask = response_mask & (u < t), xt = MASK there.
    """
    if x0.dim() != 2:
        raise ValueError(f"noised_draws: x0 must be [P, L], got shape {tuple(x0.shape)}")
    P, L = x0.shape
    if tuple(response_mask.shape) != (P, L):
        raise ValueError(f"noised_draws: response_mask has shape {tuple(response_mask.shape)}, "
                         f"expected {(P, L)} like x0")
    if noise.u.shape[0] != P or noise.u.shape[2] < L:
        raise ValueError(f"noised_draws: noise drawn for {noise.u.shape[0]} rows of length "
                         f"{noise.u.shape[2]}, rows here are {P} x {L}")
    u = noise.u[:, :, :L].to(x0.device)
    t = noise.t.to(x0.device)
    noise_mask = (u < t[:, :, None]) & response_mask.to(device=x0.device, dtype=torch.bool)[:, None, :]
    xt = torch.where(noise_mask, torch.full_like(noise_mask, mask_token_id, dtype=x0.dtype),
                     x0[:, None, :])
    return NoisedDraws(xt=xt, noise_mask=noise_mask, t=noise.t)
