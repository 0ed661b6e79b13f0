"""One-rank checks of the DPO objective (objectives/dpo.py) on real tiny models, against
``diffusion.dpo_estimate.dpo_estimate`` (the reference form over scoring callables) and against a
hand computation on fixed ELBOs."""

from __future__ import annotations

import math

import torch

from megatron_dllm.config import ParallelConfig
from megatron_dllm.data.dpo_batches import MockPairs, PairDataset
from megatron_dllm.diffusion import masks
from megatron_dllm.diffusion.dpo_estimate import PreferenceBatch, dpo_estimate
from megatron_dllm.diffusion.vrpo import naive, vrpo
from megatron_dllm.model.presets import get_preset
from megatron_dllm.objectives import StepContext
from megatron_dllm.objectives.dpo import DpoObjective

L, MASK, EOD, BETA, SEED, ITERATION = 64, 255, 254, 0.1, 5, 3
PAIRS = [10, 11, 12]


def _batch():
    data = PairDataset(MockPairs(20, L, EOD, seed=9, content_vocab=250, pad_multiple=8))
    return PairDataset.collate([data[i] for i in PAIRS], PAIRS)


def _scorer(model, batch, n, block=None):
    """score(xt, targets) for dpo_estimate: called for policy / reference, chosen then rejected; the
    MDLM layout, or with ``block`` the block-diffusion input [xt ; x0] (logits of the xt half)."""
    calls = []

    def score(xt, targets):
        side = ("chosen", "rejected")[len(calls) % 2]
        calls.append(side)
        docs = batch[side]["document_ids"].repeat_interleave(n, dim=0)
        positions = torch.arange(L).expand(xt.shape[0], L)
        if block is None:
            logits = model(xt, positions, masks.dense_mask("bidirectional", L, None, docs))
        else:
            logits = model(torch.cat([xt, targets], 1), positions.repeat(1, 2),
                           masks.dense_mask("block_diffusion", L, block, docs))[:, :L]
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]

    return score


def _objective_loss(objective, model, batch, step):
    inputs = objective.prepare_inputs(batch, step)
    reference = objective.reference_elbos(inputs)
    logits = model(inputs.tokens, inputs.position_ids, inputs.attention_mask, logits_index=inputs.logits_index)
    loss_sum, count, report = objective.loss_func(inputs, step, reference)(logits)
    return inputs, reference, loss_sum, int(count), report


def dpo_unit_worker(rank, world_size):
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    init_model_parallel(ParallelConfig(), seed=7)
    cfg = get_preset("tiny-dense")
    policy = build_model(cfg, ParallelConfig(), init_seed=1).eval()
    reference = build_model(cfg, ParallelConfig(), init_seed=2).eval().requires_grad_(False)
    batch = _batch()
    step = StepContext(iteration=ITERATION, block_size=L)
    out = {}
    for name, sampling, block in (("vrpo", vrpo(3), None), ("naive", naive(2), None), ("bd", vrpo(2), 16),
                                  ("bd_naive", naive(2), 16)):
        objective = DpoObjective(seq_length=L, micro_batch_size=len(PAIRS), seed=SEED, mask_token_id=MASK,
                                 beta=BETA, sampling=sampling, block_size=block).with_reference(reference)
        with torch.no_grad():
            inputs, _, loss_sum, count, report = _objective_loss(objective, policy, batch, step)
            pb = PreferenceBatch(chosen=batch["chosen"]["tokens"], rejected=batch["rejected"]["tokens"],
                                 chosen_mask=batch["chosen"]["loss_mask"], rejected_mask=batch["rejected"]["loss_mask"],
                                 pair_indices=PAIRS)
            n = sampling.num_draws
            want = dpo_estimate(_scorer(policy, batch, n, block), _scorer(reference, batch, n, block), pb, sampling,
                                BETA, MASK, SEED, ITERATION)
        x0 = torch.stack([batch[s]["tokens"] for s in ("chosen", "rejected")], dim=1)
        prompt = ~inputs.response
        tokens = inputs.tokens[:, :L].reshape(len(PAIRS), 2, n, L)
        out[name] = {
            "loss": (loss_sum.item(), want.loss.sum().item()), "count": count,
            "margin": (report["margin_sum"].item(), want.margin.sum().item()),
            "kl": (report["kl_sum"].item(), want.kl.sum().item()),
            "correct": (report["correct_pairs"].item(), want.correct.sum().item()),
            "rows": tuple(inputs.tokens.shape),
            "prompt_noised": int((inputs.noise_mask & prompt[:, :, None, :]).sum()),
            "prompt_changed": int(((tokens != x0[:, :, None, :]) & prompt[:, :, None, :]).sum()),
            "shared_rows": inputs.ref_tokens is inputs.tokens,
            "clean_half": None if block is None else bool(torch.equal(inputs.tokens[:, L:], inputs.targets)),
        }

    # hand computation on fixed ELBOs: logits 0 give log p = -log V at every position
    objective = DpoObjective(seq_length=L, micro_batch_size=len(PAIRS), seed=SEED, mask_token_id=MASK, beta=BETA,
                             sampling=vrpo(2))
    inputs = objective.prepare_inputs(batch, step)
    V = 256
    ref_chosen, ref_rejected = torch.tensor([-20.0, -31.0, -5.0]), torch.tensor([-25.0, -12.0, -40.0])
    logits = torch.zeros(inputs.tokens.shape[0], L, V, requires_grad=True)
    loss_sum, count, report = objective.loss_func(inputs, step, (ref_chosen, ref_rejected))(logits)
    scored = (inputs.noise_mask & inputs.response[:, :, None, :]).sum(-1).double()  # [P, 2, n]
    expected = 0.0
    margins = []
    for p in range(len(PAIRS)):
        b = [-math.log(V) * sum(float(scored[p, s, d]) / float(inputs.t[p, s, d]) for d in range(2)) / 2
             for s in range(2)]
        margin = BETA * ((b[0] - float(ref_chosen[p])) - (b[1] - float(ref_rejected[p])))
        margins.append(margin)
        expected += -math.log(1.0 / (1.0 + math.exp(-margin)))
    out["hand"] = {"loss": (loss_sum.item(), expected), "count": int(count),
                   "margin": (report["margin_sum"].item(), sum(margins)),
                   "correct": (report["correct_pairs"].item(), float(sum(m > 0 for m in margins)))}

    # gradients reach the policy only
    objective = DpoObjective(seq_length=L, micro_batch_size=len(PAIRS), seed=SEED, mask_token_id=MASK, beta=BETA,
                             sampling=vrpo(2)).with_reference(reference)
    policy.train()
    _, _, loss_sum, _, _ = _objective_loss(objective, policy, batch, step)
    loss_sum.backward()
    out["policy_grad"] = sum(float(p.grad.abs().sum()) for p in policy.parameters() if p.grad is not None)
    out["reference_grad"] = sum(1 for p in reference.parameters() if p.grad is not None)
    return out


def _manual_elbos(model, batch, n, seed, iteration, sampling, block=None):
    """Per-pair ELBOs of both replies under ``model`` and ``sampling``'s policy noise, from
    ``dpo_estimate.sequence_elbo`` over a scoring callable (independent of the objective's rows)."""
    from megatron_dllm.diffusion.dpo_estimate import sequence_elbo
    from megatron_dllm.diffusion.vrpo import preference_noise

    noise = preference_noise(batch["sample_index"], L, sampling, seed, iteration)
    score = _scorer(model, batch, n, block)
    return [sequence_elbo(score, batch[side]["tokens"], batch[side]["loss_mask"].bool(),
                          getattr(noise, f"policy_{side}"), MASK).double() for side in ("chosen", "rejected")]


def preference_eval_worker(rank, world_size):
    """generate/preference_eval.py on tiny-dense models against the reference forms."""
    from megatron_dllm.diffusion.dpo_estimate import loss_variance
    from megatron_dllm.diffusion.preference import dpo_loss
    from megatron_dllm.generate.preference_eval import loss_variance_ratio, preference_metrics, scoring_objective
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    init_model_parallel(ParallelConfig(), seed=7)
    cfg = get_preset("tiny-dense")
    policy = build_model(cfg, ParallelConfig(), init_seed=1).eval()
    reference = build_model(cfg, ParallelConfig(), init_seed=2).eval()
    pairs = MockPairs(7, L, EOD, seed=9, content_vocab=250, pad_multiple=8)
    everything = PairDataset.collate([pairs[i] for i in range(7)], list(range(7)))
    out = {}
    with torch.no_grad():
        for name, block in (("mdlm", None), ("bd", 16)):
            scorer = scoring_objective(L, mask_token_id=MASK, samples=3, beta=BETA, block_size=block, seed=SEED)
            got = preference_metrics(policy, pairs, scorer, reference=reference, batch_pairs=3)
            whole = preference_metrics(policy, pairs, scorer, reference=reference, batch_pairs=7)
            pc, pr = _manual_elbos(policy, everything, 3, SEED, 0, vrpo(3), block)
            rc, rr = _manual_elbos(reference, everything, 3, SEED, 0, vrpo(3), block)
            want = dpo_loss(pc, pr, rc, rr, BETA)
            out[name] = {"got": got, "whole": whole,
                         "want": {"pairs": 7, "preference_accuracy": float((pc > pr).double().mean()),
                                  "elbo_chosen": float(pc.mean()), "elbo_rejected": float(pr.mean()),
                                  "reward_accuracy": float((want.margin > 0).double().mean()),
                                  "reward_margin": float(want.margin.mean()), "dpo_loss": float(want.loss.mean())}}
        # the variance ratio against dpo_estimate.loss_variance over the same pairs, draws and noise
        scorer = scoring_objective(L, mask_token_id=MASK, samples=2, beta=BETA, seed=SEED)
        first = PairDataset.collate([pairs[i] for i in range(4)], list(range(4)))
        pb = PreferenceBatch(chosen=first["chosen"]["tokens"], rejected=first["rejected"]["tokens"],
                             chosen_mask=first["chosen"]["loss_mask"], rejected_mask=first["rejected"]["loss_mask"],
                             pair_indices=list(range(4)))
        ratio = loss_variance_ratio(policy, reference, pairs, scorer, repeats=5, batch_pairs=4)
        # the scorer callables alternate chosen / rejected, as dpo_estimate calls them
        want = {s: loss_variance(_scorer(policy, first, 2), _scorer(reference, first, 2), pb, sampling, BETA, MASK,
                                 5, seed=SEED).variance for s, sampling in (("naive", naive(2)), ("vrpo", vrpo(2)))}
        out["variance"] = {"got": ratio, "want": want}
        same = loss_variance_ratio(reference, reference, pairs, scorer, repeats=3, batch_pairs=4)
        out["variance_same_model"] = same
    return out
