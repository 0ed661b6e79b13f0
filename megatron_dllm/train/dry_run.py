"""``pretrain --dry-run``: validate a launch script before it waits in the queue.

Parses and checks the run for the world size the launcher will give it (``WORLD_SIZE`` from the
environment, as torchrun and srun set it; default 1), builds the model on the meta device (no memory)
and prints the resolved config, the parallel layout and the per-GPU memory plan. Needs no data,
tokenizer or checkpoint file (a tokenizer that is there gives the vocabulary size; a --load that
holds a checkpoint is checked against the model flags, from its metadata) and starts no multi-rank
process group: a one-rank gloo group in this process is enough for the meta build. Under torchrun
every rank validates; only rank 0 builds and prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from megatron_dllm.config import ConfigError

GIB = 2 ** 30


def world_size_from_env(environ=os.environ) -> int:
    """WORLD_SIZE as torchrun / srun set it (1 when unset); ConfigError for anything but a positive int."""
    text = environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"WORLD_SIZE={text!r} in the environment: set it to the number of ranks, e.g. WORLD_SIZE=64")
    return int(text)


def layout(run, world_size: int) -> dict:
    """The parallel layout of ``world_size`` ranks: sizes and the micro-batches per step."""
    p, t = run.parallel, run.training
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    ep, etp = p.expert_model_parallel_size, p.expert_tensor_parallel_size or tp
    dp = p.data_parallel_size(world_size)
    out = dict(world_size=world_size, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
               context_parallel_size=cp, data_parallel_size=dp,
               virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
               sequence_parallel=p.sequence_parallel)
    if run.model.is_moe:
        out.update(expert_model_parallel_size=ep, expert_tensor_parallel_size=etp,
                   expert_data_parallel_size=world_size // (ep * etp * pp))
    out["micro_batches_per_step"] = t.global_batch_size // (t.micro_batch_size * dp)
    return out


def plan_options(run, world_size: int):
    """PlanOptions of the memory planner for this run (GPU unless --device cpu)."""
    from megatron_dllm.model.memory import PlanOptions

    from megatron_dllm.objectives import objective_type

    t, d = run.training, run.diffusion
    return PlanOptions(
        rows_per_sample=objective_type(d.objective).training_rows_per_sample(d),
        data_parallel_size=run.parallel.data_parallel_size(world_size),
        micro_batch_size=t.micro_batch_size, bd_micro_batch_size=d.bd_micro_batch_size,
        global_batch_size=t.global_batch_size, bf16=t.bf16,
        device="cpu" if t.device == "cpu" else "cuda",
        distributed_optimizer=t.use_distributed_optimizer, overlap_grad_reduce=t.overlap_grad_reduce,
        recompute=t.recompute_granularity or "none",
        attention_backend=None if d.attention_backend == "auto" else d.attention_backend)


def build_and_plan(run, world_size: int):
    """(parameter counts, MemoryPlan): the model built once on the meta device in a one-rank group."""
    import torch.distributed as dist

    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.model.info import count_parameters
    from megatron_dllm.model.memory import check_layout, plan_from_parameters, rank_parameters
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_model_parallel, teardown

    opts = plan_options(run, world_size)
    check_layout(run.model, run.parallel, opts)
    setup_device("auto")  # the CPU backend on a machine without CUDA (a login node)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # A private one-rank group: torchrun's RANK / MASTER_ADDR describe the real job, not this check.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        init_model_parallel(ParallelConfig())
        # Grouped-GEMM experts hold the same parameters as one linear pair per expert; the planner
        # reads the per-expert layout (and the grouped_gemm / TE packages need not be installed here);
        # the token dispatcher holds no parameters (flex needs EP > 1, which one rank cannot build).
        model_cfg = dataclasses.replace(run.model, moe_grouped_gemm=False, moe_token_dispatcher_type="alltoall")
        model = build_model(model_cfg, ParallelConfig(), meta=True)
        counts = count_parameters(model, model_cfg)
        plan = plan_from_parameters(model_cfg, run.parallel, opts, rank_parameters(model, model_cfg, run.parallel))
    finally:
        teardown()
    return counts, plan, opts


def _memory_lines(plan, opts) -> list:
    lines = [f"memory per GPU (GiB; {'bf16' if opts.bf16 else 'fp32'}, "
             f"{'distributed' if opts.distributed_optimizer else 'replicated'} optimizer, recompute "
             f"{opts.recompute}, {opts.device}; activations are an estimate, model/activations.py"
             + (f", {opts.rows_per_sample} model rows per sample: complementary copies" if opts.rows_per_sample > 1
                else "") + "):",
             f"  {'stage':>5} {'params':>9} {'weights':>8} {'grads':>7} {'optim':>7} {'act BD':>7} "
             f"{'act MDLM':>8} {'total BD':>9} {'total MDLM':>10}"]
    for s in plan.stages:
        lines.append(
            f"  {s.stage:>5} {s.num_params / 1e9:>8.3f}B {s.param_bytes / GIB:>8.2f} {s.grad_bytes / GIB:>7.2f} "
            f"{s.optimizer_bytes / GIB:>7.2f} {s.activation_bytes['bd'] / GIB:>7.2f} "
            f"{s.activation_bytes['mdlm'] / GIB:>8.2f} {s.total('bd') / GIB:>9.2f} {s.total('mdlm') / GIB:>10.2f}")
    return lines


def _te_note(run) -> Optional[str]:
    from megatron_dllm.model.transformer_config import Execution

    if not Execution.from_training(run.training, run.model).use_transformer_engine:
        return None
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return ("--transformer-impl transformer_engine: Transformer Engine is not installed here (it must be on "
                "the GPU nodes)")
    return None


def dry_run(run, environ=os.environ, out=print) -> int:
    """Validate ``run`` for WORLD_SIZE ranks and print what a real start would do; returns 0.

    Raises ConfigError (one line naming the fix) for anything a real start would refuse before
    reading data.
    """
    from megatron_dllm.model.transformer_config import Execution
    from megatron_dllm.objectives import memory_lines
    from megatron_dllm.train.preflight import check_checkpoint_config, check_run, resolve_vocab_size

    world_size = world_size_from_env(environ)
    check_run(run, world_size, files=False)
    # As setup_run does before reading data; a login node need not have Transformer Engine installed.
    Execution.from_training(run.training, run.model).check(run.model, run.parallel, bf16=run.training.bf16,
                                                require_installed=False)
    notes = list(run.notes)
    if run.vocab_from_tokenizer and run.data.tokenizer_model and run.data.tokenizer_type != "NullTokenizer":
        if os.path.exists(run.data.tokenizer_model):
            notes.append(resolve_vocab_size(run) or f"--vocab-size {run.model.vocab_size} is the tokenizer's")
        else:
            notes.append(f"--tokenizer-model is not here: the plan uses --vocab-size {run.model.vocab_size}; "
                         f"a real start takes the tokenizer's size")
    check_checkpoint_config(run)  # only when --load already holds a checkpoint (its metadata, no weights)
    if environ.get("RANK", "0") != "0":
        return 0
    counts, plan, opts = build_and_plan(run, world_size)
    out(f"dry run: {world_size} rank(s) (WORLD_SIZE); no data was read")
    for line in run.accepted_flags:
        out(f"accepted, no effect here: {line}")
    for line in notes:
        out(f"note: {line}")
    note = _te_note(run)
    if note:
        out(f"note: {note}")
    out("resolved config:")
    out(json.dumps({k: v for k, v in run.to_dict().items() if k not in ("accepted_flags", "notes")}, indent=1))
    lay = layout(run, world_size)
    out("parallel layout: " + ", ".join(f"{k} {v}" for k, v in lay.items()))
    out("parameters: " + ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in counts.items()))
    for line in _memory_lines(plan, opts) + memory_lines(run, plan):
        out(line)
    return 0
