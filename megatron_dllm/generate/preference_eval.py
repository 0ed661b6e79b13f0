"""How a dLLM ranks the two replies of held-out preference pairs, and the variance of its DPO loss
estimate under VRPO and naive noise (``tools/eval_preference.py``; the DPO stage of ``make demo``).

    pairs = DPOPairDataset(prefix, seq_length=32, eod_id=tok.eod_id, shuffle=False)
    scorer = scoring_objective(32, mask_token_id=mask_id, samples=8)
    metrics = preference_metrics(policy, pairs, scorer, reference=sft_model)
    ratio = loss_variance_ratio(policy, sft_model, pairs, scorer, repeats=64)

A reply is scored by its ELBO estimate, computed as a DPO training step computes it
(``objectives/dpo.DpoObjective``: the same rows, layout, noise and ``diffusion.likelihood.elbo``),
with VRPO's noise: n stratified times, one mask each, shared by the chosen and the rejected reply
and by the reference. Pair j of the data draws the noise of (seed, j, round).

* ``preference_accuracy``: the share of pairs whose chosen reply has the higher ELBO, B(chosen) >
  B(rejected): the model itself prefers the right answer, with no reference involved.
* With a reference, DPO's implicit reward r = beta (B_policy - B_reference): ``reward_accuracy`` is
  the share of pairs with r(chosen) > r(rejected) (what DPO training logs as its preference
  accuracy; 0 when the policy is the reference), ``reward_margin`` the mean of r(chosen) -
  r(rejected), ``dpo_loss`` the mean DPO loss.
* ``loss_variance_ratio``: the batch-mean DPO loss of a fixed policy, reference and batch is
  estimated ``repeats`` times with independent noise (round r draws with iteration r), once with
  naive noise (iid t, independent noise for each of the four ELBOs) and once with VRPO's; the ratio
  of the two variances (``diffusion.dpo_estimate.variance_ratio``) and its bootstrap interval.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional

import torch

from megatron_dllm.diffusion.dpo_estimate import LossVariance, variance_ratio, variance_ratio_interval
from megatron_dllm.diffusion.preference import dpo_loss
from megatron_dllm.diffusion.vrpo import naive, vrpo
from megatron_dllm.objectives.base import StepContext
from megatron_dllm.objectives.dpo import DpoObjective


def scoring_objective(seq_length: int, *, mask_token_id: int, samples: int = 8, beta: float = 0.1,
                      block_size: Optional[int] = None, seed: int = 0, device: str = "cpu") -> DpoObjective:
    """The DPO objective whose rows and ELBOs score the pairs: VRPO noise with ``samples`` times,
    the MDLM layout (``block_size`` None) or the block-diffusion one, as ``--dpo-block-size``."""
    if samples < 1:
        raise ValueError(f"--elbo-samples must be >= 1, got {samples}")
    return DpoObjective(seq_length=seq_length, micro_batch_size=1, attention_backend="sdpa", device=device,
                        seed=seed, mask_token_id=mask_token_id, beta=beta, sampling=vrpo(samples),
                        block_size=block_size)


def pair_batches(pairs, batch_pairs: int, limit: Optional[int] = None) -> Iterator[Dict]:
    """Micro-batches of ``batch_pairs`` pairs of the dataset in order (the first ``limit`` pairs)."""
    from megatron_dllm.data.dpo_batches import PairDataset

    count = len(pairs) if limit is None else min(limit, len(pairs))
    for start in range(0, count, batch_pairs):
        indices = list(range(start, min(start + batch_pairs, count)))
        yield PairDataset.collate([pairs[i] for i in indices], indices)


def _elbos(objective: DpoObjective, batch: Dict, iteration: int, policy, reference=None) -> Dict[str, torch.Tensor]:
    step = StepContext(iteration=iteration, block_size=objective.block_size or objective.seq_length)
    inputs = objective.prepare_inputs(batch, step)
    out = dict(zip(("policy_chosen", "policy_rejected"), objective.scored_elbos(policy, inputs, reference=False)))
    if reference is not None:
        out.update(zip(("reference_chosen", "reference_rejected"),
                       objective.scored_elbos(reference, inputs, reference=True)))
    return {k: v.double().cpu() for k, v in out.items()}


def preference_metrics(policy, pairs, objective: DpoObjective, *, reference=None, batch_pairs: int = 32,
                       limit: Optional[int] = None, rounds: int = 1) -> Dict[str, float]:
    """Preference accuracy of ``policy`` (and, with ``reference``, reward accuracy, margin and DPO loss)
    over the pairs; each pair's ELBOs are the mean of ``rounds`` estimates (module docstring)."""
    if rounds < 1 or batch_pairs < 1:
        raise ValueError(f"rounds and batch_pairs must be >= 1, got {rounds} and {batch_pairs}")
    per_round: List[Dict[str, torch.Tensor]] = []
    for r in range(rounds):
        batches = [_elbos(objective, batch, r, policy, reference) for batch in pair_batches(pairs, batch_pairs, limit)]
        per_round.append({k: torch.cat([b[k] for b in batches]) for k in batches[0]})
    b = {k: torch.stack([p[k] for p in per_round]).mean(0) for k in per_round[0]}
    result = {"pairs": int(b["policy_chosen"].numel()), "elbo_samples": objective.sampling.num_draws * rounds,
              "preference_accuracy": float((b["policy_chosen"] > b["policy_rejected"]).double().mean()),
              "elbo_chosen": float(b["policy_chosen"].mean()), "elbo_rejected": float(b["policy_rejected"].mean())}
    if reference is not None:
        out = dpo_loss(b["policy_chosen"], b["policy_rejected"], b["reference_chosen"], b["reference_rejected"],
                       objective.beta)
        result.update(reward_accuracy=float((out.margin > 0).double().mean()), reward_margin=float(out.margin.mean()),
                      dpo_loss=float(out.loss.mean()))
    return result


def _loss_variance(policy, reference, batch: Dict, objective: DpoObjective, repeats: int) -> LossVariance:
    losses = []
    for r in range(repeats):
        b = _elbos(objective, batch, r, policy, reference)
        out = dpo_loss(b["policy_chosen"], b["policy_rejected"], b["reference_chosen"], b["reference_rejected"],
                       objective.beta)
        losses.append(out.loss.mean())
    losses = torch.stack(losses)
    return LossVariance(losses=losses, mean=float(losses.mean()), variance=float(losses.var()))


def loss_variance_ratio(policy, reference, pairs, objective: DpoObjective, *, repeats: int = 64,
                        batch_pairs: int = 32, samples: Optional[int] = None) -> Dict[str, float]:
    """Variance of the batch-mean DPO loss (the first ``batch_pairs`` pairs) over ``repeats`` noise
    draws, naive over VRPO, with ``samples`` times per ELBO (default: the objective's; module docstring)."""
    if repeats < 2:
        raise ValueError(f"--variance-repeats must be >= 2 to estimate a variance, got {repeats}")
    batch = next(pair_batches(pairs, batch_pairs))
    n = objective.sampling.num_draws if samples is None else samples
    estimates = {name: _loss_variance(policy, reference, batch, dataclasses.replace(objective, sampling=sampling),
                                      repeats)
                 for name, sampling in (("naive", naive(n)), ("vrpo", vrpo(n)))}
    lo, hi = variance_ratio_interval(estimates["naive"], estimates["vrpo"])
    return {"variance_ratio": variance_ratio(estimates["naive"], estimates["vrpo"]),
            "variance_ratio_interval_90": [lo, hi], "variance_naive": estimates["naive"].variance,
            "variance_vrpo": estimates["vrpo"].variance, "repeats": repeats, "pairs": int(len(batch["sample_index"])),
            "elbo_samples": n}
