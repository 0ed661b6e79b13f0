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
from megatron_dllm.data.microbatches import micro_batches
from megatron_dllm.objectives import Objective, StepContext
from megatron_dllm.train.engine import data_parallel, forward_backward, reduce_reports


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
def kept_training_state(model):
    """Run the body in evaluation mode and give training back exactly the state it had.

    * ``torch.no_grad()``: Megatron-Core's routers add the routed tokens to ``local_tokens_per_expert``
      (the counts of the next expert-bias update) and record aux / z losses only while gradients are
      enabled; with them enabled, validation tokens moved the expert bias of the next training step.
    * ``eval()`` on every module (no dropout), then each module's own training flag back.
    * the CPU / CUDA / model-parallel RNG states, restored. (The embedding-noise hook holds no state
      between forwards and is off in evaluation: ``EmbeddingNoise.applied``.)
    Data is read through fresh samplers, so no training iterator moves.
    """
    modules = [m for chunk in model for m in chunk.modules()]
    flags = [m.training for m in modules]
    tracker = tensor_parallel.get_cuda_rng_tracker()
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
           tracker.get_states())
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


def evaluate_elbo(setup, objective: Objective, block: int, dataset, num_batches: int) -> dict:
    """NELBO (nats / token), bits per token and standard error of ``objective`` at ``block`` over
    ``num_batches`` global batches of ``dataset``; for AR the next-token NLL.

    Leaves the model, its buffers and the RNG states as they were (``kept_training_state``).
    """
    with kept_training_state(setup.model):
        return _evaluate_elbo(setup, objective, block, dataset, num_batches)


def _evaluate_elbo(setup, objective: Objective, block: int, dataset, num_batches: int) -> dict:
    G = setup.run.training.global_batch_size
    mbs = objective.micro_batch_size
    estimates = []
    for b in range(num_batches):
        batches = micro_batches(dataset, b * G, G, mbs, *data_parallel())
        per_point = []
        for t in objective.eval_points():
            step = StepContext(iteration=0, block_size=block, eval_t=t)
            reports = forward_backward(objective.forward_step(step), batches, setup.model,
                                       num_microbatches=len(batches), seq_length=objective.model_seq_length,
                                       micro_batch_size=mbs * objective.rows_per_sample(step), forward_only=True)
            totals = reduce_reports(reports)
            per_point.append(totals["loss_sum"] / max(totals["num_tokens"], 1.0))
        estimates.append(sum(per_point) / len(per_point))
    n = len(estimates)
    nelbo = sum(estimates) / n
    se = (math.sqrt(sum((e - nelbo) ** 2 for e in estimates) / (n - 1) / n) if n > 1 else None)
    return {"nelbo": nelbo, "bits_per_token": nelbo / math.log(2),
            "standard_error": se, "batches": n, "block_size": block, "layout": objective.layout}
