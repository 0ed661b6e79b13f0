"""The pretraining loop: one function per stage, no math of its own (STYLE.md 8).

    setup -> [ block size from the curriculum -> micro-batches -> forward/backward -> checked update
               -> log / eval / save ]*

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
from megatron.core import parallel_state
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_dllm.data.batch import collate
from megatron_dllm.data.sampler import GlobalBatchSampler
from megatron_dllm.diffusion.noising import NoiseConfig
from megatron_dllm.model.core_attention import resolve_backend
from megatron_dllm.model.embedding_noise import EmbeddingNoise
from megatron_dllm.checkpoint import state as checkpointing
from megatron_dllm.platform.distributed import comm_device
from megatron_dllm.train.engine import forward_backward, optimizer_step, reduce_reports, synced_params
from megatron_dllm.train.forward_step import StepContext, make_forward_step
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
    schedule: object
    total_iters: int
    state: TrainState
    logger: MetricsLogger
    embedding_noise: Optional[EmbeddingNoise]


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


def layout_at(run, schedule, consumed_tokens: int):
    """(layout, block size, phase) of the step that starts after ``consumed_tokens``."""
    L = run.model.seq_length
    if schedule is None:
        return "ar", 1, "ar"
    block = schedule.block_size_at(consumed_tokens)
    return ("bd" if block < L else "mdlm"), block, schedule.phase_at(consumed_tokens)


def step_context(setup: Setup, layout: str, block: int, iteration: int, eval_t=None) -> StepContext:
    run = setup.run
    d = run.diffusion
    noise = NoiseConfig(eps=d.t_eps, t_low=d.t_low, t_high=d.t_high, sampling=d.t_sampling,
                        granularity=d.t_granularity, num_strata=run.training.global_batch_size)
    hook = setup.embedding_noise
    if hook is not None:
        hook.active = eval_t is None and iteration < d.embedding_noise_iters
    return StepContext(
        layout=layout, seq_length=run.model.seq_length, block_size=block, iteration=iteration,
        seed=run.training.seed, noise=noise, mask_token_id=setup.mask_token_id,
        loss_weight=d.loss_weight, loss_norm=d.loss_norm, label_shift=d.label_shift,
        token_shift=d.token_shift, clean_stream_causal=d.clean_stream_causal,
        ar_loss_weight=d.ar_loss_weight, complementary=d.complementary_masking,
        attention_backend=resolve_backend(d.attention_backend, setup.device), device=setup.device,
        num_buckets=d.t_buckets, eval_t=eval_t, embedding_noise=hook,
    )


def micro_batches(setup: Setup, dataset, first_sample: int, micro_batch_size: int, step: int = 0):
    """This DP rank's micro-batches of the global batch that starts at sample ``first_sample``."""
    sampler = GlobalBatchSampler(
        total_samples=len(dataset), consumed_samples=first_sample,
        global_batch_size=setup.run.training.global_batch_size, micro_batch_size=micro_batch_size,
        data_parallel_rank=parallel_state.get_data_parallel_rank(),
        data_parallel_size=parallel_state.get_data_parallel_world_size(),
    )
    out = []
    for indices in sampler.micro_batches_for_step(step):
        samples = [dataset[i % len(dataset)] for i in indices]
        out.append(collate(samples, indices))
    return out


def micro_batch_size_for(run, layout: str) -> int:
    if layout == "bd" and run.diffusion.bd_micro_batch_size:
        return run.diffusion.bd_micro_batch_size
    return run.training.micro_batch_size


def run_step(setup: Setup, layout: str, block: int) -> dict:
    """One optimizer step; returns the reduced metrics and ``problem`` (None, or what is not finite).

    The update is applied only when the loss and the gradient norm are finite.
    """
    run, state = setup.run, setup.state
    mbs = micro_batch_size_for(run, layout)
    batches = micro_batches(setup, setup.datasets[0], state.consumed_samples, mbs)
    ctx = step_context(setup, layout, block, state.iteration)
    L = run.model.seq_length
    reports = forward_backward(
        make_forward_step(ctx), batches, setup.model, setup.optimizer,
        num_microbatches=len(batches), seq_length=2 * L if layout == "bd" else L,
        micro_batch_size=mbs * (2 if ctx.complementary and layout != "ar" else 1),  # rows doubled
    )
    keys = ["loss_sum", "num_tokens", "num_noised", "correct"]
    if layout != "ar":
        keys += [f"bucket{k}_{kind}" for k in range(run.diffusion.t_buckets) for kind in ("loss_sum", "count")]
    if layout == "bd" and ctx.ar_loss_weight > 0:
        keys += ["ar_loss_sum", "ar_tokens"]
    # The step's one host sync (for logging), taken before the update so a NaN loss updates nothing.
    totals = reduce_reports(reports, keys=tuple(keys))
    grad_norm, updated = None, False
    if step_problem(totals["loss_sum"], None) is None:
        grad_norm, updated = optimizer_step(setup.optimizer)
    if updated:  # a skipped update does not advance the LR schedule (as in Megatron-LM)
        setup.scheduler.step(increment=1)
    return {"totals": totals, "grad_norm": grad_norm, "updated": updated,
            "problem": step_problem(totals["loss_sum"], grad_norm)}


def evaluate(setup: Setup, layout: str, block: int) -> dict:
    """Validation ELBO of the current layout and block size (``train/evaluation.py``)."""
    from megatron_dllm.train.evaluation import evaluate_elbo

    if setup.datasets[1] is None:
        return {}
    with synced_params(setup.model):
        return evaluate_elbo(setup, layout, block, setup.datasets[1], setup.run.training.eval_iters)


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
    for k in range(run.diffusion.t_buckets if layout != "ar" else 0):
        count = totals.get(f"bucket{k}_count", 0.0)
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
        layout, block, phase = layout_at(run, setup.schedule, state.consumed_tokens)
        if block != last_block:
            setup.logger.info(f"iteration {state.iteration}: phase {phase}, block size {block}, layout {layout}")
            last_block = block
        t0 = time.perf_counter()
        step = run_step(setup, layout, block)
        elapsed = time.perf_counter() - t0
        state.iteration += 1
        state.consumed_samples += t.global_batch_size
        state.consumed_tokens += t.global_batch_size * L
        if state.iteration % run.logging.log_interval == 0 or state.iteration == 1 or step["problem"]:
            _log(setup, step, layout, block, phase, elapsed)
        if step["problem"]:
            skipped += 1
            _skip_or_stop(setup, step["problem"], skipped)
        if t.eval_interval and state.iteration % t.eval_interval == 0:
            setup.logger.log_valid(state.iteration, evaluate(setup, layout, block))
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
