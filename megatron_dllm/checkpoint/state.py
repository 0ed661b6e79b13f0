"""A training run's state in a checkpoint: model, optimizer, scheduler, RNG (collective save and load).

Checkpoints are Megatron-Core torch_dist (dist_checkpointing) folders in the layout of
``checkpoint/layout.py``, plus our ``dllm_meta.json`` (iteration, consumed samples / tokens,
LR-scheduler state, the run config, the parallel layout, the lineage and the writer's ``extra`` keys)
and ``rng/rank_XXXXX.pt`` (per-rank RNG states, restored only under the same layout).

A save writes ``iter_XXXXXXX.tmp`` first, renames it when every rank has finished, and only then
updates the tracker file (itself via rename): a crash or ``kill -9`` at any point leaves the previous
checkpoint as the latest. Saving and pruning follow ``checkpoint/save_dir.py`` (no run deletes
another's checkpoints). Loading checks every pickle before anything is read
(``checkpoint/dist_load.py``). Model and optimizer states are resharded on load, so a run can resume
under a different TP / PP / EP layout (the distributed optimizer is saved 'fully_reshardable').
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import List, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel

from megatron_dllm.checkpoint import save_dir
from megatron_dllm.checkpoint.dist_load import safe_dist_load
from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.layout import (  # noqa: F401 - re-exported for the training loop and tools
    META,
    TRACKER,
    checkpoint_path,
    fsync_dir,
    latest_iteration,
    read_meta,
    write_text_atomic,
)
from megatron_dllm.checkpoint.safe_pickle import safe_torch_load
from megatron_dllm.config import ConfigError, ModelConfig

# Layout-independent optimizer keys: no per-sub-optimizer prefix, fully reshardable tensors.
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
# Model fields that may differ between a checkpoint and a run without changing any tensor.
_NON_ARCH_FIELDS = {"seq_length", "max_position_embeddings", "hidden_dropout", "attention_dropout",
                    "init_method_std", "moe_token_dispatcher_type", "moe_grouped_gemm",
                    "moe_aux_loss_coeff", "moe_z_loss_coeff", "moe_router_bias_update_rate",
                    "moe_router_load_balancing_type"}
# The lineage this process writes (save_dir.py); set by prepare_save, a new one otherwise.
_lineage: Optional[str] = None


def prepare_save(save: Optional[str], load: Optional[str], finetune: bool = False) -> List[str]:
    """Before a run: refuse a foreign --save, take over the lineage being resumed, clean stale .tmp.

    Every rank calls it (the checks only read); rank 0 removes stale folders. Returns their names.
    """
    global _lineage
    save_dir.check_save_dir(save, load, finetune)
    _lineage = None
    if save and save_dir.resumes_from_save(save, load, finetune) and latest_iteration(save) is not None:
        _lineage = read_meta(save, latest_iteration(save)).get(save_dir.LINEAGE)
    if _lineage is None:
        _lineage = save_dir.new_lineage()
    if save and (not dist.is_initialized() or dist.get_rank() == 0):
        return save_dir.clean_stale(save)
    return []


def current_lineage() -> str:
    """The lineage id this process writes into its checkpoints."""
    global _lineage
    if _lineage is None:
        _lineage = save_dir.new_lineage()
    return _lineage


def _unwrap(chunks) -> List[torch.nn.Module]:
    return [getattr(c, "module", c) for c in chunks]


def _model_sharded_state_dict(chunks):
    chunks = _unwrap(chunks)
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def layout_signature() -> dict:
    """The parallel layout of this process group (RNG states only transfer between equal ones)."""
    return {
        "world_size": dist.get_world_size(),
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "ep": parallel_state.get_expert_model_parallel_world_size(),
    }


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    root: str,
    iteration: int,
    model,
    optimizer,
    scheduler,
    *,
    consumed_samples: int,
    consumed_tokens: int,
    run_config: dict,
    keep_last: int = 0,
    extra: Optional[dict] = None,
) -> str:
    """Save model (+ optimizer and scheduler when given) at ``iteration``; returns the directory.

    Collective: every rank calls it. ``keep_last`` > 0 deletes older checkpoints of this run's lineage
    after the save (``save_dir.prune``). ``extra`` keys are written at the top level of the metadata.
    """
    rank = dist.get_rank()
    final = checkpoint_path(root, iteration)
    tmp = final + ".tmp"
    if rank == 0:
        if os.path.lexists(root) and not os.path.isdir(root):
            raise CheckpointError(f"--save {root} is a file, not a folder: choose a folder path for the checkpoints")
        os.makedirs(root, exist_ok=True)
        if os.path.lexists(tmp):  # left by a save of this iteration that was killed
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    dist.barrier()
    sharded = _model_sharded_state_dict(model)
    if optimizer is not None:
        sharded["optimizer"] = optimizer.sharded_state_dict(dict(sharded), metadata=_OPTIM_METADATA)
    dist_checkpointing.save(sharded, tmp)
    os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    dist.barrier()
    if rank == 0:
        meta = {
            "iteration": iteration,
            "consumed_samples": consumed_samples,
            "consumed_tokens": consumed_tokens,
            "has_optimizer": optimizer is not None,
            "optimizer_parts": _optimizer_parts(optimizer) if optimizer is not None else 0,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "layout": layout_signature(),
            "run": run_config,
            save_dir.LINEAGE: current_lineage(),
            **(extra or {}),
        }
        write_text_atomic(os.path.join(tmp, META), json.dumps(meta, indent=2, default=str))
        # An existing iter_N is moved aside first; deleted below only if this lineage wrote it.
        aside = save_dir.make_room(root, iteration, current_lineage())
        os.rename(tmp, final)
        fsync_dir(root)
        # The tracker moves only after the folder is complete and in place.
        write_text_atomic(os.path.join(root, TRACKER), str(iteration))
        if aside is not None and aside[1]:
            shutil.rmtree(aside[0], ignore_errors=True)
        save_dir.prune(root, keep_last, current_lineage())
    dist.barrier()
    return final


def _optimizer_parts(optimizer) -> int:
    """Sub-optimizers of a (chained) Megatron optimizer: 2 when experts are expert-parallel."""
    return len(getattr(optimizer, "chained_optimizers", [optimizer]))


def _optimizer_sharded_state_for_loading(optimizer, model_sharded):
    """The optimizer's sharded state dict to load into, for a never-stepped torch Adam too.

    Megatron-Core's DistributedOptimizer.state_dict() reads every parameter's ``step`` when Apex /
    Transformer Engine are absent (torch Adam creates its state lazily at the first step), so
    building the dict for a fresh optimizer fails. Its state is given placeholder tensors (zeros,
    step 0) for that, and the step placeholders are removed again because the load restores the
    step from the checkpoint's common state. Parameters are not touched.
    """
    added = _materialize_optimizer_state(optimizer)
    sharded = optimizer.sharded_state_dict(model_sharded, is_loading=True, metadata=_OPTIM_METADATA)
    for state in added:
        state.pop("step", None)
    return sharded


def _materialize_optimizer_state(optimizer) -> list:
    """Zero moments and step 0 for parameters without optimizer state; returns the states touched."""
    added = []
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        init = getattr(sub, "init_state_fn", None)
        if inner is None or init is None:
            continue
        init(inner, getattr(sub, "config", None))
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                    added.append(state)
    return added


def check_model_config(saved: dict, current: ModelConfig, where: str) -> None:
    """Raise ConfigError when the checkpoint's architecture differs from the flags."""
    now = dataclasses.asdict(current)
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r} vs flags {now[key]!r}"
        for key in now
        if key not in _NON_ARCH_FIELDS and key in saved and saved[key] != now[key]
    ]
    if diffs:
        raise ConfigError(
            f"checkpoint {where} has a different model config than the flags ("
            + "; ".join(diffs) + "): pass the checkpoint's values or load another checkpoint"
        )


def load_checkpoint(
    root: str,
    model,
    optimizer=None,
    scheduler=None,
    *,
    model_config: Optional[ModelConfig] = None,
    load_optimizer: bool = True,
    load_rng: bool = True,
    iteration: Optional[int] = None,
) -> dict:
    """Load the latest (or given) checkpoint under ``root`` into the model (+ optimizer, scheduler).

    Returns the checkpoint's metadata dict. The optimizer is loaded only when the checkpoint has one
    and ``load_optimizer``; RNG states only under the same parallel layout.
    """
    if iteration is None:
        iteration = latest_iteration(root)
        if iteration is None:
            raise CheckpointError(f"--load {root}: no checkpoint found ({TRACKER} missing)")
    path = checkpoint_path(root, iteration)
    meta = read_meta(root, iteration)
    if model_config is not None and "run" in meta and "model" in meta["run"]:
        check_model_config(meta["run"]["model"], model_config, path)
    sharded = _model_sharded_state_dict(model)
    with_optimizer = optimizer is not None and load_optimizer and meta.get("has_optimizer")
    if with_optimizer:
        saved_parts = meta.get("optimizer_parts", _optimizer_parts(optimizer))
        if saved_parts != _optimizer_parts(optimizer):
            raise ConfigError(
                f"{path}: its optimizer state has {saved_parts} parts (experts "
                f"{'with' if saved_parts > 1 else 'without'} expert parallelism) but this run's has "
                f"{_optimizer_parts(optimizer)}: resume with "
                f"--expert-model-parallel-size {'> 1' if saved_parts > 1 else '1'}, or pass --no-load-optim "
                "to load the weights with a fresh optimizer")
        sharded["optimizer"] = _optimizer_sharded_state_for_loading(optimizer, dict(sharded))
    state = safe_dist_load(sharded, path)
    chunks = _unwrap(model)
    if len(chunks) == 1:
        chunks[0].load_state_dict(state["model"])
    else:
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(state[f"model{i}"])
    if with_optimizer:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and meta.get("scheduler"):
            scheduler.load_state_dict(meta["scheduler"])
    rng_file = os.path.join(path, "rng", f"rank_{dist.get_rank():05d}.pt")
    if load_rng and meta.get("layout") == layout_signature() and os.path.isfile(rng_file):
        _set_rng_state(safe_torch_load(rng_file, rng_file))
    meta["loaded_optimizer"] = bool(with_optimizer)
    return meta
