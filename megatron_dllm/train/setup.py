"""Run set-up: tokenizer, data, model, optimizer, scheduler, resume; in that order, failing early."""

from __future__ import annotations

import os

import torch.distributed as dist
from megatron.core import parallel_state

from megatron_dllm.config import ConfigError
from megatron_dllm.data.datasets import build_datasets
from megatron_dllm.data.tokenizer import load_tokenizer, require_mask_token
from megatron_dllm.model.builder import build_model_chunks
from megatron_dllm.model.transformer_config import Execution
from megatron_dllm.objectives import dataset_options, objective_for, objective_type
from megatron_dllm.platform.distributed import init_model_parallel
from megatron_dllm.checkpoint import state as checkpointing
from megatron_dllm.checkpoint.layout import recorded_mask_token_id
from megatron_dllm.train.engine import build_optimizer, wrap_ddp
from megatron_dllm.train.logging import MetricsLogger
from megatron_dllm.train.loop import Setup, TrainState, build_scheduler, optimizer_config
from megatron_dllm.train.preflight import check_checkpoint_config, train_iters


def _checkpoint_mask_id(run):
    """The mask token id recorded in the --load checkpoint (converted or trained), if any."""
    ck = run.checkpoint
    if not ck.load or not os.path.isdir(ck.load) or checkpointing.latest_iteration(ck.load) is None:
        return None
    meta = checkpointing.read_meta(ck.load, checkpointing.latest_iteration(ck.load))
    return recorded_mask_token_id(meta)


def token_ids(run):
    """(mask_token_id, eod_id, vocab_size) from the tokenizer, or the mock-data conventions."""
    d, data, m = run.diffusion, run.data, run.model
    if data.tokenizer_model:
        mask_id = d.mask_token_id if d.mask_token_id is not None else _checkpoint_mask_id(run)
        tok = load_tokenizer(data.tokenizer_model, mask_token_id=mask_id)
        if tok.vocab_size > m.padded_vocab_size(run.parallel.tensor_model_parallel_size):
            raise ConfigError(f"tokenizer has {tok.vocab_size} tokens but --vocab-size is {m.vocab_size}: "
                              f"pass --vocab-size {tok.vocab_size}")
        if objective_type(d.objective).uses_mask_token:
            mask = require_mask_token(tok)
        else:
            mask = tok.mask_token_id if tok.mask_token_id is not None else tok.vocab_size - 1
        return mask, tok.eod_id, tok.vocab_size
    # mock data: the last two ids of the vocabulary are [MASK] and EOD (unless a checkpoint says)
    mask = d.mask_token_id if d.mask_token_id is not None else _checkpoint_mask_id(run)
    mask = mask if mask is not None else m.vocab_size - 1
    if not 0 <= mask < m.padded_vocab_size(1):
        raise ConfigError(f"--dllm-mask-token-id {mask} is outside the vocabulary (size {m.vocab_size})")
    return mask, m.vocab_size - 2, m.vocab_size


def setup_run(run, device: str) -> Setup:
    """Build everything for ``run`` on this rank; resume from --load when it holds a checkpoint."""
    world = dist.get_world_size()
    rank0 = dist.get_rank() == 0
    t, ck = run.training, run.checkpoint
    check_checkpoint_config(run)
    Execution.from_training(t, run.model).check(run.model, run.parallel, bf16=t.bf16)  # before any data is read
    stale = checkpointing.prepare_save(ck.save, ck.load, ck.finetune)  # refuses a foreign --save
    mask_token_id, eod_id, vocab_size = token_ids(run)
    total = train_iters(run)
    G, L = t.global_batch_size, run.model.seq_length
    eval_samples = (t.eval_iters * G) if t.eval_interval else 0
    datasets = build_datasets(run.data, seq_length=L, num_samples=(total * G, eval_samples, 0),
                              seed=t.seed, eod_id=eod_id, mask_token_id=mask_token_id,
                              token_vocab_size=vocab_size, **dataset_options(run))
    if datasets[0] is None:
        raise ConfigError("the training split is empty: give it a positive weight in --split")
    if eval_samples and datasets[1] is None:
        raise ConfigError("--eval-interval needs a validation split: give it a positive weight in --split")

    objective = objective_for(run, mask_token_id, device)
    init_model_parallel(run.parallel, seed=t.seed)
    chunks = build_model_chunks(run.model, run.parallel, causal=objective.causal,
                                attention_backend=run.diffusion.attention_backend,
                                dtype="bf16" if t.bf16 else "fp32", init_seed=t.seed,
                                execution=Execution.from_training(t, run.model))
    if device == "cuda":
        chunks = [c.cuda() for c in chunks]
    objective.attach(chunks)  # its model hooks (embedding noise) or frozen models (DPO reference), before DDP
    model = wrap_ddp(chunks, use_distributed_optimizer=t.use_distributed_optimizer,
                     overlap_grad_reduce=t.overlap_grad_reduce, overlap_param_gather=t.overlap_param_gather)
    optimizer = build_optimizer(model, optimizer_config(run))
    scheduler = build_scheduler(optimizer, run, total)
    state = TrainState()
    metrics_path = run.logging.metrics_path or (
        os.path.join(ck.save or run.logging.tensorboard_dir, "metrics.jsonl")
        if (ck.save or run.logging.tensorboard_dir) else None)
    logger = MetricsLogger(enabled=rank0, tensorboard_dir=run.logging.tensorboard_dir,
                           metrics_path=metrics_path, train_iters=total)
    if stale:
        logger.info(f"removed {', '.join(stale)} from {ck.save}: left by a save that did not finish")
    if ck.load and checkpointing.latest_iteration(ck.load) is not None:
        fresh = ck.finetune or ck.no_load_optim
        meta = checkpointing.load_checkpoint(
            ck.load, model, optimizer, scheduler, model_config=run.model,
            load_optimizer=not fresh, load_rng=not ck.no_load_rng)
        if not ck.finetune and meta.get("has_optimizer"):
            # Tokens are read back, not recomputed from --seq-length: the curriculum position is in tokens.
            state = TrainState(iteration=meta["iteration"], consumed_samples=meta["consumed_samples"],
                               consumed_tokens=meta.get("consumed_tokens", meta["consumed_samples"] * L))
        logger.info(f"loaded {checkpointing.checkpoint_path(ck.load, meta['iteration'])} "
                    f"(optimizer {'restored' if meta['loaded_optimizer'] else 'fresh'}); "
                    f"starting at iteration {state.iteration}")
    elif ck.load:
        logger.info(f"--load {ck.load} holds no checkpoint: starting from scratch")
    logger.info(
        f"world {world} = TP {run.parallel.tensor_model_parallel_size} x PP "
        f"{run.parallel.pipeline_model_parallel_size} x CP {run.parallel.context_parallel_size} x DP "
        f"{parallel_state.get_data_parallel_world_size()}"
        f" (EP {run.parallel.expert_model_parallel_size}); {total} iterations of {G} x {L} tokens; "
        f"objective {run.diffusion.objective}; device {device}")
    return Setup(run=run, device=device, model=model, optimizer=optimizer, scheduler=scheduler,
                 datasets=datasets, mask_token_id=mask_token_id, eod_id=eod_id, objective=objective,
                 total_iters=total, state=state, logger=logger)
