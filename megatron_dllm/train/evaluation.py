"""Masked-diffusion ELBO evaluation with stratified t: validation during training and tools/evaluate.py.

The NELBO per token is E_t E_mask[(1/t) sum_noised CE] / tokens with t ~ U[lo, hi]. Instead of drawing
t, every batch is evaluated at the K midpoints t_k = lo + (hi - lo)(k + 1/2)/K (a midpoint rule over
t, the low-variance estimator), with masks drawn from a generator seeded by (seed, sample index) so
every evaluation sees the same noise. The per-batch estimates give the standard error. For the AR
objective the number is the next-token NLL.
"""

from __future__ import annotations

import math
from typing import List, Optional

from megatron_dllm.train.engine import reduce_reports, train_step
from megatron_dllm.train.forward_step import make_forward_step


def t_points(run) -> List[Optional[float]]:
    d = run.diffusion
    lo = d.t_low if d.t_low is not None else d.t_eps
    hi = d.t_high if d.t_high is not None else 1.0
    return [lo + (hi - lo) * (k + 0.5) / d.eval_t_points for k in range(d.eval_t_points)]


def evaluate_elbo(setup, layout: str, block: int, dataset, num_batches: int) -> dict:
    """NELBO (nats / token), bits per token and standard error over ``num_batches`` global batches."""
    from megatron_dllm.train.loop import micro_batch_size_for, micro_batches, step_context

    run = setup.run
    L, G = run.model.seq_length, run.training.global_batch_size
    mbs = micro_batch_size_for(run, layout)
    points = [None] if layout == "ar" else t_points(run)
    estimates = []
    for b in range(num_batches):
        batches = micro_batches(setup, dataset, b * G, mbs)
        per_point = []
        for t in points:
            ctx = step_context(setup, layout, block, 0, eval_t=t)
            if layout != "ar":
                ctx.loss_weight, ctx.loss_norm = "inv_t", "all_tokens"
            reports, _, _ = train_step(make_forward_step(ctx), batches, setup.model, setup.optimizer,
                                       num_microbatches=len(batches), seq_length=2 * L if layout == "bd" else L,
                                       micro_batch_size=mbs, forward_only=True)
            totals = reduce_reports(reports)
            per_point.append(totals["loss_sum"] / max(totals["num_tokens"], 1.0))
        estimates.append(sum(per_point) / len(per_point))
    n = len(estimates)
    nelbo = sum(estimates) / n
    se = (math.sqrt(sum((e - nelbo) ** 2 for e in estimates) / (n - 1) / n) if n > 1 else None)
    return {"nelbo": nelbo, "bits_per_token": nelbo / math.log(2),
            "standard_error": se, "batches": n, "block_size": block, "layout": layout}
