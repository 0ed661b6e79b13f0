"""DPO on ELBO estimates (LLaDA 1.5 / LLaDA2.0 stage 2.3, METHOD.md 7.2) and its reported metrics.

With B the ELBO estimates of log p(y | x) (``likelihood.elbo``) of the policy pi and the frozen
reference, for a pair (chosen y_w, rejected y_l):

    r_w = beta * (B_pi(y_w) - B_ref(y_w)),  r_l = beta * (B_pi(y_l) - B_ref(y_l))   (implicit rewards)
    loss = -log sigmoid(r_w - r_l)

Metrics per pair: the rewards, the reward margin r_w - r_l, preference accuracy 1[margin > 0] (a tie,
as when policy == reference, counts as wrong), and ``kl``, Schulman's k2 estimator d^2 / 2 with
d = B_pi(y) - B_ref(y), averaged over the pair's two responses. k2 is >= 0, is 0 iff the two ELBOs
agree, never overflows (k3 = exp(-d) - 1 + d does once -d exceeds ~88 nats, easy for a log-ratio
summed over a response), and matches KL(pi || ref) to second order when pi is close to ref, the DPO
regime. It estimates the KL only for y ~ pi and exact B; on preference data with ELBO estimates
it is a drift monitor.
The reference inputs are detached (the reference is frozen); the metrics are detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DpoOutput:
    """Per-pair DPO loss and metrics, all [P] float32 (``loss`` carries the policy's grad).

    Attributes:
        loss: -log sigmoid(margin).
        reward_chosen: beta * (B_pi(y_w) - B_ref(y_w)).
        reward_rejected: beta * (B_pi(y_l) - B_ref(y_l)).
        margin: reward_chosen - reward_rejected.
        correct: 1.0 where margin > 0, else 0.0 (preference accuracy = correct.mean()).
        kl: k2 estimate d^2 / 2, mean over the chosen and rejected response (module docstring).
    """

    loss: torch.Tensor
    reward_chosen: torch.Tensor
    reward_rejected: torch.Tensor
    margin: torch.Tensor
    correct: torch.Tensor
    kl: torch.Tensor

    @property
    def loss_sum(self) -> torch.Tensor:
        """0-dim sum of the per-pair losses (divide by the number of pairs, Megatron's contract)."""
        return self.loss.sum()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> DpoOutput:
    """DPO loss and metrics from the four ELBO estimates of P pairs (module docstring).

    Args:
        policy_chosen, policy_rejected: [P] float, B_pi(y_w), B_pi(y_l) (with grad).
        reference_chosen, reference_rejected: [P] float, B_ref(y_w), B_ref(y_l) (detached here).
        beta: the DPO temperature, > 0 (LLaDA2.0: 0.1).

    Returns:
        DpoOutput, every field [P].
    """
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    shape = tuple(policy_chosen.shape)
    if len(shape) != 1:
        raise ValueError(f"dpo_loss: ELBOs must be [P] (one per pair), got policy_chosen {shape}")
    for name, x in (("policy_rejected", policy_rejected), ("reference_chosen", reference_chosen),
                    ("reference_rejected", reference_rejected)):
        if tuple(x.shape) != shape:
            raise ValueError(f"dpo_loss: {name} has shape {tuple(x.shape)}, expected {shape} like "
                             f"policy_chosen")
    d_chosen = policy_chosen.float() - reference_chosen.detach().float()
    d_rejected = policy_rejected.float() - reference_rejected.detach().float()
    margin = beta * (d_chosen - d_rejected)
    loss = -F.logsigmoid(margin)
    margin = margin.detach()
    kl = 0.25 * (d_chosen.detach().square() + d_rejected.detach().square())
    return DpoOutput(loss=loss, reward_chosen=beta * d_chosen.detach(),
                     reward_rejected=beta * d_rejected.detach(), margin=margin,
                     correct=(margin > 0).float(), kl=kl)
