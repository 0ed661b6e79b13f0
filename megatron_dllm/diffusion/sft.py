"""SFT noise: both complementary instances of a batch in one tensor (METHOD.md 6.1, 6.2).

``complementary_instances`` noises each row from its own generator (``apply_noise_per_sample``, so
it is deterministic per (seed, sample index, iteration) on every rank), takes the ``complement``
and stacks the two: row b and row b + B are the pair of sample b. Only loss-mask positions (the
response and its EOS padding) are ever masked, so the prompt stays clean, and each loss-mask token
is masked in exactly one of the two rows. The first row has t from ``cfg`` (the SFT band, e.g.
[0.3, 0.8]) and the second 1 - t. Stacking keeps the two instances in the same micro-batch, so
``losses.diffusion_loss`` over the [2B, L] result supervises every response token once per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .noising import NoiseConfig, apply_noise_per_sample, complement


@dataclass(frozen=True)
class SftInstances:
    """Two complementary noised instances per sample, stacked: all [2B, L].

    Attributes:
        tokens: x0 twice (the labels, no shift).
        xt: noised inputs. noise_mask: bool, masked positions. t_per_token: float32 (t, then 1 - t).
        loss_mask: the loss mask twice.
    """

    tokens: torch.Tensor
    xt: torch.Tensor
    noise_mask: torch.Tensor
    t_per_token: torch.Tensor
    loss_mask: torch.Tensor


def complementary_instances(x0: torch.Tensor, loss_mask: torch.Tensor,
                            sample_indices: Union[Sequence[int], torch.Tensor], seed: int,
                            iteration: int, cfg: NoiseConfig, mask_token_id: int,
                            block_size: Optional[int] = None) -> SftInstances:
    """Noise x0 [B, L] per sample, add the complement, stack to [2B, L] (module docstring).

    Args:
        x0: [B, L] long, prompt + response (+ EOS padding) tokens.
        loss_mask: [B, L] bool, True on the response and its padding (required: it protects the prompt).
        sample_indices, seed, iteration, cfg, block_size: as in ``noising.apply_noise_per_sample``.
        mask_token_id: the [MASK] id.

    Returns:
        SftInstances; rows [0, B) are the first instances, rows [B, 2B) their complements.
    """
    if x0.dim() != 2:
        raise ValueError(f"complementary_instances: x0 must be [B, L], got shape {tuple(x0.shape)}")
    if loss_mask is None or tuple(loss_mask.shape) != tuple(x0.shape):
        got = None if loss_mask is None else tuple(loss_mask.shape)
        raise ValueError(f"complementary_instances: loss_mask must be [B, L] = {tuple(x0.shape)} like "
                         f"x0 (it keeps the prompt unmasked), got {got}")
    loss_mask = loss_mask.to(device=x0.device, dtype=torch.bool)
    first = apply_noise_per_sample(x0, sample_indices, seed, iteration, cfg, mask_token_id,
                                   loss_mask=loss_mask, block_size=block_size)
    second = complement(first, x0, mask_token_id, loss_mask)
    return SftInstances(tokens=torch.cat([x0, x0]), xt=torch.cat([first.xt, second.xt]),
                        noise_mask=torch.cat([first.noise_mask, second.noise_mask]),
                        t_per_token=torch.cat([first.t_per_token, second.t_per_token]),
                        loss_mask=torch.cat([loss_mask, loss_mask]))
