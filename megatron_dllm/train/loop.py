"""The pretraining loop: one function per stage, no math of its own (STYLE.md 8).

    setup -> [ block size from the curriculum -> micro-batches -> train_step -> log / eval / save ]*
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import torch
from megatron.core import parallel_state
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_dllm.data.batch import collate
from megatron_dllm.data.sampler import GlobalBatchSampler
from megatron_dllm.diffusion.noising import NoiseConfig
from megatron_dllm.model.core_attention import resolve_backend
from megatron_dllm.model.embedding_noise import EmbeddingNoise
from megatron_dllm.train import checkpointing
from megatron_dllm.train.engine import reduce_reports, train_step
from megatron_dllm.train.forward_step import StepContext, make_forward_step
from megatron_dllm.train.logging import MetricsLogger
from megatron_dllm.train.signals import ExitSignalHandler


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0

    def consumed_tokens(self, seq_length: int) -> int:
        return self.consumed_samples * seq_length


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
        init_lr=0.0 if t.lr_warmup_iters else t.lr,
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
    """One optimizer step; returns the reduced metrics."""
    run, state = setup.run, setup.state
    mbs = micro_batch_size_for(run, layout)
    batches = micro_batches(setup, setup.datasets[0], state.consumed_samples, mbs)
    ctx = step_context(setup, layout, block, state.iteration)
    L = run.model.seq_length
    reports, grad_norm, updated = train_step(
        make_forward_step(ctx), batches, setup.model, setup.optimizer,
        num_microbatches=len(batches), seq_length=2 * L if layout == "bd" else L, micro_batch_size=mbs,
    )
    keys = ["loss_sum", "num_tokens", "num_noised", "correct"]
    if layout != "ar":
        keys += [f"bucket{k}_{kind}" for k in range(run.diffusion.t_buckets) for kind in ("loss_sum", "count")]
    totals = reduce_reports(reports, keys=tuple(keys))
    if updated:
        setup.scheduler.step(increment=1)
    return {"totals": totals, "grad_norm": grad_norm, "updated": updated}


def evaluate(setup: Setup, layout: str, block: int) -> dict:
    """Validation ELBO of the current layout and block size (``train/evaluation.py``)."""
    from megatron_dllm.train.evaluation import evaluate_elbo

    if setup.datasets[1] is None:
        return {}
    return evaluate_elbo(setup, layout, block, setup.datasets[1], setup.run.training.eval_iters)


def save(setup: Setup) -> None:
    run, state = setup.run, setup.state
    checkpointing.save_checkpoint(
        run.checkpoint.save, state.iteration, setup.model, setup.optimizer, setup.scheduler,
        consumed_samples=state.consumed_samples,
        consumed_tokens=state.consumed_tokens(run.model.seq_length),
        run_config=run.to_dict(), keep_last=run.checkpoint.keep_last,
        extra={"mask_token_id": setup.mask_token_id, "eod_id": setup.eod_id,
               "objective": run.diffusion.objective,
               "label_shift": run.diffusion.label_shift},
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
        "iteration": state.iteration, "consumed_tokens": state.consumed_tokens(L), "phase": phase,
        "block_size": block, "layout": layout, "lr": lr, "loss": loss, "masked_acc": acc,
        "grad_norm": step["grad_norm"], "tokens_per_s": G * L / elapsed, "ms_per_iter": 1000 * elapsed,
    }
    scalars = {"loss": loss, "lr": lr, "grad_norm": step["grad_norm"], "masked_acc": acc,
               "block_size": block, "tokens_per_s": G * L / elapsed, f"loss_{phase}": loss}
    for k in range(run.diffusion.t_buckets if layout != "ar" else 0):
        count = totals.get(f"bucket{k}_count", 0.0)
        if count:
            bucket_loss = totals[f"bucket{k}_loss_sum"] / count
            scalars[f"loss_t{k}"] = bucket_loss
            metrics[f"loss_t{k}"] = bucket_loss
    setup.logger.log_train(state.iteration, metrics, scalars)


def train(setup: Setup) -> int:
    """Run until the last iteration, an exit interval, or SIGTERM (with --exit-signal-handler)."""
    run, state = setup.run, setup.state
    ck, t = run.checkpoint, run.training
    handler = ExitSignalHandler() if ck.exit_signal_handler else None
    L = run.model.seq_length
    last_block = None
    started = state.iteration
    while state.iteration < setup.total_iters:
        layout, block, phase = layout_at(run, setup.schedule, state.consumed_tokens(L))
        if block != last_block:
            setup.logger.info(f"iteration {state.iteration}: phase {phase}, block size {block}, layout {layout}")
            last_block = block
        t0 = time.perf_counter()
        step = run_step(setup, layout, block)
        elapsed = time.perf_counter() - t0
        state.iteration += 1
        state.consumed_samples += t.global_batch_size
        if state.iteration % run.logging.log_interval == 0 or state.iteration == 1:
            _log(setup, step, layout, block, phase, elapsed)
        if t.eval_interval and state.iteration % t.eval_interval == 0:
            setup.logger.log_valid(state.iteration, evaluate(setup, layout, block))
        if ck.save and ck.save_interval and state.iteration % ck.save_interval == 0:
            save(setup)
        if handler is not None and handler.should_exit():
            setup.logger.info(f"SIGTERM received: saving at iteration {state.iteration} and exiting")
            if not (ck.save_interval and state.iteration % ck.save_interval == 0):
                save(setup)
            return 0
        if t.exit_interval and state.iteration - started >= t.exit_interval:
            if ck.save and not (ck.save_interval and state.iteration % ck.save_interval == 0):
                save(setup)
            setup.logger.info(f"exit interval reached at iteration {state.iteration}")
            return 0
    if ck.save and state.iteration > started and not (
            ck.save_interval and state.iteration % ck.save_interval == 0):
        save(setup)
    return 0
