"""Masked-diffusion ELBO evaluation with stratified t: validation during training and tools/evaluate.py.

The NELBO per token is E_t E_mask[(1/t) sum_noised CE] / tokens with t ~ U[lo, hi]. Instead of drawing
t, every batch is evaluated at the K midpoints t_k = lo + (hi - lo)(k + 1/2)/K (a midpoint rule over
t, the low-variance estimator), with masks drawn from a generator seeded by (seed, sample index) so
every evaluation sees the same noise. The per-batch estimates give the standard error. For the AR
objective the number is the next-token NLL.

Evaluation leaves every piece of training state as it was (``kept_training_state``), so a run with
validation trains exactly as one without, and a resume across an evaluation is bit-exact.
"""

from __future__ import annotations

import contextlib
import math
from typing import List, Optional, Tuple

import torch
from megatron.core import tensor_parallel

from megatron_dllm.config import ConfigError
from megatron_dllm.train.engine import forward_backward, reduce_reports
from megatron_dllm.train.forward_step import make_forward_step


def t_points(run) -> List[Optional[float]]:
    d = run.diffusion
    lo = d.t_low if d.t_low is not None else d.t_eps
    hi = d.t_high if d.t_high is not None else 1.0
    return [lo + (hi - lo) * (k + 0.5) / d.eval_t_points for k in range(d.eval_t_points)]


def eval_block_size(requested: Optional[int], seq_length: int) -> int:
    """The block size tools/evaluate.py scores with: ``requested`` (--eval-block-size), or the whole
    sequence (MDLM) when it is None; ConfigError unless it is a positive divisor of ``seq_length``."""
    if requested is None:
        return seq_length
    if requested < 1 or seq_length % requested:
        divisors = [d for d in range(1, seq_length + 1) if seq_length % d == 0]
        shown = ", ".join(map(str, divisors[-4:]))
        raise ConfigError(f"--eval-block-size {requested} must be a positive divisor of --seq-length "
                          f"{seq_length} (e.g. {shown}; leave it out for the whole sequence)")
    return requested


def json_safe(result: dict) -> Tuple[dict, List[str]]:
    """``result`` with NaN / Inf numbers replaced by None (valid JSON), and the names replaced."""
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    return {k: (None if k in bad else v) for k, v in result.items()}, bad


@contextlib.contextmanager
def kept_training_state(model, hook=None):
    """Run the body in evaluation mode and give training back exactly the state it had.

    * ``torch.no_grad()``: Megatron-Core's routers add the routed tokens to ``local_tokens_per_expert``
      (the counts of the next expert-bias update) and record aux / z losses only while gradients are
      enabled; with them enabled, validation tokens moved the expert bias of the next training step.
    * ``eval()`` on every module (no dropout), then each module's own training flag back.
    * the CPU / CUDA / model-parallel RNG states and the embedding-noise hook's fields, restored.
    Data is read through fresh samplers, so no training iterator moves.
    """
    modules = [m for chunk in model for m in chunk.modules()]
    flags = [m.training for m in modules]
    tracker = tensor_parallel.get_cuda_rng_tracker()
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
           tracker.get_states())
    hook_fields = dict(vars(hook)) if hook is not None else None
    try:
        for chunk in model:
            chunk.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flag in zip(modules, flags):
            module.training = flag
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
        tracker.set_states(rng[2])
        if hook is not None:
            vars(hook).update(hook_fields)


def evaluate_elbo(setup, layout: str, block: int, dataset, num_batches: int) -> dict:
    """NELBO (nats / token), bits per token and standard error over ``num_batches`` global batches.

    Leaves the model, its buffers, the RNG states and the hooks as they were (``kept_training_state``).
    """
    with kept_training_state(setup.model, setup.embedding_noise):
        return _evaluate_elbo(setup, layout, block, dataset, num_batches)


def _evaluate_elbo(setup, layout: str, block: int, dataset, num_batches: int) -> dict:
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
            reports = forward_backward(make_forward_step(ctx), batches, setup.model,
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
