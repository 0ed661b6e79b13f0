"""The pretraining loop: one function per stage, no math of its own (STYLE.md 8).

    setup -> [ the step's objective and block size from the curriculum -> micro-batches
               (data/microbatches.py) -> forward/backward (the objective's forward step and loss,
               objectives/) -> checked update -> log / eval / save ]*

The curriculum position is the count of consumed tokens, which checkpoints store (a resume with
another --seq-length continues where the run was). A NaN / Inf loss or gradient norm skips the update
and stops the run (``train/nonfinite.py``); evaluation leaves all training state alone
(``train/evaluation.py``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_dllm.checkpoint import state as checkpointing
from megatron_dllm.data.microbatches import micro_batches
from megatron_dllm.objectives import Objective, StepContext
from megatron_dllm.platform.distributed import comm_device
from megatron_dllm.train.engine import (data_parallel, forward_backward, optimizer_step, reduce_reports,
                                        synced_params)
from megatron_dllm.train.evaluation import evaluate_elbo
from megatron_dllm.train.logging import MetricsLogger
from megatron_dllm.train.nonfinite import (EXIT_NONFINITE, NonFiniteError, step_problem, stop_message,
                                           weights_finite)
from megatron_dllm.train.signals import ExitSignalHandler


@dataclass
class TrainState:
    """Where the run is: iterations done, samples read (data position), tokens trained (curriculum)."""

    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0


@dataclass
class Setup:
    """Everything the loop holds for the life of the run."""

    run: object
    device: str
    model: List
    optimizer: object
    scheduler: object
    datasets: tuple
    mask_token_id: int
    eod_id: int
    objective: Objective    # objectives.objective_for(run, ...): everything the step does by objective
    total_iters: int
    state: TrainState
    logger: MetricsLogger


def build_scheduler(optimizer, run, total_iters: int) -> OptimizerParamScheduler:
    t = run.training
    decay = t.lr_decay_iters or total_iters
    return OptimizerParamScheduler(
        optimizer,
        init_lr=t.lr_warmup_init if t.lr_warmup_iters else t.lr,
        max_lr=t.lr,
        min_lr=t.min_lr,
        lr_warmup_steps=t.lr_warmup_iters,
        lr_decay_steps=max(decay, t.lr_warmup_iters + 1),
        lr_decay_style=t.lr_decay_style,
        start_wd=t.weight_decay,
        end_wd=t.weight_decay,
        wd_incr_steps=max(total_iters, 1),
        wd_incr_style="constant",
        wsd_decay_steps=t.lr_wsd_decay_iters,
        lr_wsd_decay_style=t.lr_wsd_decay_style,
    )


def optimizer_config(run) -> OptimizerConfig:
    t = run.training
    return OptimizerConfig(
        optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps, clip_grad=t.clip_grad,
        bf16=t.bf16, params_dtype=torch.float32,
        use_distributed_optimizer=t.use_distributed_optimizer,
        overlap_param_gather=t.overlap_param_gather,
    )


def run_step(setup: Setup, objective: Objective, block: int) -> dict:
    """One optimizer step of ``objective`` at ``block``; returns the reduced metrics and ``problem``
    (None, or what is not finite). The update is applied only when the loss and the gradient norm are finite.
    """
    state = setup.state
    step = StepContext(iteration=state.iteration, block_size=block)
    batches = micro_batches(setup.datasets[0], state.consumed_samples, setup.run.training.global_batch_size,
                            objective.micro_batch_size, *data_parallel())
    reports = forward_backward(
        objective.forward_step(step), batches, setup.model, setup.optimizer,
        num_microbatches=len(batches), seq_length=objective.model_seq_length,
        micro_batch_size=objective.micro_batch_size * objective.rows_per_sample(step),
    )
    # The step's one host sync (for logging), taken before the update so a NaN loss updates nothing.
    totals = reduce_reports(reports, keys=objective.report_keys(step))
    grad_norm, updated = None, False
    if step_problem(totals["loss_sum"], None) is None:
        grad_norm, updated = optimizer_step(setup.optimizer)
    if updated:  # a skipped update does not advance the LR schedule (as in Megatron-LM)
        setup.scheduler.step(increment=1)
    return {"totals": totals, "grad_norm": grad_norm, "updated": updated,
            "problem": step_problem(totals["loss_sum"], grad_norm)}


def evaluate(setup: Setup, objective: Objective, block: int) -> dict:
    """Validation ELBO of the step's objective and block size (``train/evaluation.py``)."""
    if setup.datasets[1] is None:
        return {}
    with synced_params(setup.model):
        return evaluate_elbo(setup, objective, block, setup.datasets[1], setup.run.training.eval_iters)


def _last_checkpoint(root: Optional[str]) -> Optional[str]:
    try:
        iteration = checkpointing.latest_iteration(root) if root else None
    except Exception:  # noqa: BLE001 - only used to word an error message
        return None
    return None if iteration is None else checkpointing.checkpoint_path(root, iteration)


def save(setup: Setup) -> None:
    """Save a checkpoint of the current iteration; NonFiniteError (nothing written) when a weight is NaN / Inf."""
    run, state = setup.run, setup.state
    with synced_params(setup.model):
        _save(setup, run, state)


def _save(setup: Setup, run, state) -> None:
    if not weights_finite(setup.model):
        raise NonFiniteError(stop_message(state.iteration, "a weight is not finite", 0,
                                          _last_checkpoint(run.checkpoint.save)))
    checkpointing.save_checkpoint(
        run.checkpoint.save, state.iteration, setup.model, setup.optimizer, setup.scheduler,
        consumed_samples=state.consumed_samples,
        consumed_tokens=state.consumed_tokens,
        run_config=run.to_dict(), keep_last=run.checkpoint.keep_last,
        extra={"finite": True, "mask_token_id": setup.mask_token_id, "eod_id": setup.eod_id,
               "objective": run.diffusion.objective,
               "label_shift": run.diffusion.label_shift,
               "token_shift": run.diffusion.token_shift,
               "clean_stream": "causal" if run.diffusion.clean_stream_causal else "block_causal"},
    )
    setup.logger.info(f"saved checkpoint at iteration {state.iteration} to {run.checkpoint.save}")


def _log(setup: Setup, step: dict, layout: str, block: int, phase: str, elapsed: float) -> None:
    run, state = setup.run, setup.state
    totals = step["totals"]
    L, G = run.model.seq_length, run.training.global_batch_size
    loss = totals["loss_sum"] / max(totals["num_tokens"], 1.0)
    acc = totals["correct"] / max(totals["num_noised"], 1.0)
    lr = setup.optimizer.param_groups[0]["lr"]
    metrics = {
        "iteration": state.iteration, "consumed_tokens": state.consumed_tokens, "phase": phase,
        "block_size": block, "layout": layout, "lr": lr, "loss": loss, "masked_acc": acc,
        "grad_norm": step["grad_norm"], "tokens_per_s": G * L / elapsed, "ms_per_iter": 1000 * elapsed,
    }
    scalars = {"loss": loss, "lr": lr, "grad_norm": step["grad_norm"], "masked_acc": acc,
               "block_size": block, "tokens_per_s": G * L / elapsed, f"loss_{phase}": loss}
    if totals.get("ar_tokens"):
        metrics["ar_loss"] = scalars["ar_loss"] = totals["ar_loss_sum"] / totals["ar_tokens"]
    for name, value in setup.objective.logged_metrics(totals).items():  # e.g. DPO's margin and accuracy
        metrics[name] = scalars[name] = value
    for k in range(sum(1 for key in totals if key.startswith("bucket") and key.endswith("_count"))):
        count = totals[f"bucket{k}_count"]
        if count:
            bucket_loss = totals[f"bucket{k}_loss_sum"] / count
            scalars[f"loss_t{k}"] = bucket_loss
            metrics[f"loss_t{k}"] = bucket_loss
    setup.logger.log_train(state.iteration, metrics, scalars)


def _saved_by_interval(ck, iteration: int) -> bool:
    return bool(ck.save and ck.save_interval and iteration % ck.save_interval == 0)


def _skip_or_stop(setup: Setup, problem: str, skipped: int) -> None:
    """Log a skipped bad iteration, or raise NonFiniteError once more than N were skipped."""
    run, iteration = setup.run, setup.state.iteration
    allowed = run.training.skip_nonfinite_iters
    if skipped > allowed:
        raise NonFiniteError(stop_message(iteration, problem, allowed, _last_checkpoint(run.checkpoint.save)))
    setup.logger.info(f"iteration {iteration}: {problem}: update skipped "
                      f"({skipped} of {allowed} allowed by --skip-nonfinite-iters)")


def train(setup: Setup) -> int:
    """Run until the last iteration, an exit interval, SIGTERM (with --exit-signal-handler) or a bad
    (NaN / Inf) iteration; returns the exit code: 0, or EXIT_NONFINITE (3) after a one-line error."""
    try:
        return _train(setup)
    except NonFiniteError as exc:
        if dist.get_rank() == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE


# --exit-duration-in-mins counts from start-up (this module is imported before the run is set up).
_START_TIME = time.time()


def _out_of_time(limit_minutes: Optional[int]) -> bool:
    """Whether --exit-duration-in-mins has passed on any rank (one all-reduce: every rank agrees)."""
    if not limit_minutes:
        return False
    late = torch.tensor([float(time.time() - _START_TIME > 60.0 * limit_minutes)], device=comm_device())
    dist.all_reduce(late, op=dist.ReduceOp.MAX)
    return bool(late.item())


def _train(setup: Setup) -> int:
    run, state = setup.run, setup.state
    ck, t = run.checkpoint, run.training
    handler = ExitSignalHandler() if ck.exit_signal_handler else None
    L = run.model.seq_length
    last_block = None
    started = state.iteration
    skipped = 0
    while state.iteration < setup.total_iters:
        # the curriculum position is in tokens: the objective of the step (bd at block L is mdlm) and its block
        objective, block, phase = setup.objective.phase_at(state.consumed_tokens)
        if block != last_block:
            setup.logger.info(f"iteration {state.iteration}: phase {phase}, block size {block}, "
                              f"layout {objective.layout}")
            last_block = block
        t0 = time.perf_counter()
        step = run_step(setup, objective, block)
        elapsed = time.perf_counter() - t0
        state.iteration += 1
        state.consumed_samples += t.global_batch_size
        state.consumed_tokens += t.global_batch_size * L
        if state.iteration % run.logging.log_interval == 0 or state.iteration == 1 or step["problem"]:
            _log(setup, step, objective.layout, block, phase, elapsed)
        if step["problem"]:
            skipped += 1
            _skip_or_stop(setup, step["problem"], skipped)
        if t.eval_interval and state.iteration % t.eval_interval == 0:
            setup.logger.log_valid(state.iteration, evaluate(setup, objective, block))
        if _saved_by_interval(ck, state.iteration):
            save(setup)
        if handler is not None and handler.should_exit():
            setup.logger.info(f"SIGTERM received: saving at iteration {state.iteration} and exiting")
            if not _saved_by_interval(ck, state.iteration):
                save(setup)
            return 0
        # Megatron-LM's rule: exit at iterations divisible by the interval (not after N steps of this run).
        if t.exit_interval and state.iteration % t.exit_interval == 0:
            if ck.save and not _saved_by_interval(ck, state.iteration):
                save(setup)
            setup.logger.info(f"exit interval reached at iteration {state.iteration}")
            return 0
        if _out_of_time(t.exit_duration_in_mins):
            if ck.save and not _saved_by_interval(ck, state.iteration):
                save(setup)
            setup.logger.info(f"--exit-duration-in-mins {t.exit_duration_in_mins} reached at iteration "
                              f"{state.iteration}: saved and exiting")
            return 0
    if ck.save and state.iteration > started and not _saved_by_interval(ck, state.iteration):
        save(setup)
    return 0
