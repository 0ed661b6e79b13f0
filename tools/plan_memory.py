#!/usr/bin/env python
"""Per-GPU training memory of a model under a parallel layout, and whether it fits a GPU.

    python tools/plan_memory.py --preset llada2.0-mini --ep 8 --dp 8 --micro-batch-size 1 --seq-length 4096
    python tools/plan_memory.py --config examples/configs/llada2_flash.yaml --gpu-memory-gb 80 --json

Parameters, gradients and optimizer state follow Megatron-Core's DDP buffers and distributed
optimizer for one rank of the layout (parameter counts from the model built on the meta device);
activations are an estimate (megatron_dllm/model/activations.py) for the block-diffusion layout
(input [xt ; x0], 2L tokens) and the MDLM layout (L tokens). With --config, the layout, batch sizes,
sequence length and dtype come from the YAML and flags override them. Memory is in GiB (2^30 bytes).
Activation recompute: --recompute none|selective|full models Megatron-Core's modes (with --config,
the YAML's --recompute-granularity is the default); --recompute auto plans none, then selective, then
full, and picks the first whose BD and MDLM steps fit, printing the pretraining flags that select it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

GIB = 2 ** 30


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="model preset name (see megatron_dllm.model.presets)")
    p.add_argument("--config", help="pretraining YAML config (model, layout, batch, dtype)")
    p.add_argument("--tp", "--tensor-model-parallel-size", dest="tp", type=int)
    p.add_argument("--pp", "--pipeline-model-parallel-size", dest="pp", type=int)
    p.add_argument("--ep", "--expert-model-parallel-size", dest="ep", type=int)
    p.add_argument("--etp", "--expert-tensor-parallel-size", dest="etp", type=int,
                   help="expert tensor-parallel size (default: TP)")
    p.add_argument("--vpp", "--virtual-pipeline-model-parallel-size", dest="vpp", type=int)
    p.add_argument("--cp", "--context-parallel-size", dest="cp", type=int,
                   help="context-parallel size: each rank holds L / CP of every sequence")
    p.add_argument("--dp", type=int, help="data-parallel size (default: the smallest that fits EP)")
    p.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--micro-batch-size", type=int)
    p.add_argument("--bd-micro-batch-size", "--dllm-bd-micro-batch-size", dest="bd_micro_batch_size", type=int,
                   help="micro-batch size of block-diffusion steps (default: --micro-batch-size)")
    p.add_argument("--global-batch-size", type=int,
                   help="sets the number of micro-batches (default: at least PP, the 1F1B peak)")
    p.add_argument("--seq-length", type=int, help="L, clean tokens per sample")
    p.add_argument("--recompute", choices=["none", "selective", "full", "auto"], default=None,
                   help="activation recompute to model (default: the config's, else none); auto: the "
                   "least recompute that fits")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda: fused RMSNorm, flex attention, bf16 by default; cpu: the fp32 CPU path")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 parameters + fp32 main parameters (default: on for cuda)")
    p.add_argument("--distributed-optimizer", "--use-distributed-optimizer", dest="distributed_optimizer",
                   action=argparse.BooleanOptionalAction, default=None, help="(default: on)")
    p.add_argument("--attention-backend", choices=["flex", "sdpa", "te"],
                   help="core attention (default: flex on cuda, sdpa on cpu)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="GPU memory in GiB (default 80)")
    p.add_argument("--reserved-gb", type=float, default=4.0,
                   help="GiB kept free for the CUDA context, NCCL buffers and fragmentation (a guess; default 4)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes) instead of the table")
    return p


def _inputs(args):
    """(name, ModelConfig, ParallelConfig, PlanOptions) from the preset or config plus flags."""
    import dataclasses

    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.model.memory import PlanOptions

    bf16_default = args.device == "cuda"
    if args.config:
        from megatron_dllm.arguments import parse_args

        run = parse_args(["--config", args.config])
        name, model, parallel = run.preset or os.path.basename(args.config), run.model, run.parallel
        from megatron_dllm.train.dry_run import plan_options

        # the run's own planner options (as --dry-run); DP and the device are set from the flags below
        opts = plan_options(run, world_size=1)
    else:
        from megatron_dllm.model.presets import get_preset

        name, model, parallel = args.preset, get_preset(args.preset), ParallelConfig()
        opts = PlanOptions(bf16=bf16_default)
    changes = {k: v for k, v in dict(
        tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp,
        expert_model_parallel_size=args.ep, expert_tensor_parallel_size=args.etp,
        virtual_pipeline_model_parallel_size=args.vpp, sequence_parallel=args.sequence_parallel,
        context_parallel_size=args.cp,
    ).items() if v is not None}
    parallel = dataclasses.replace(parallel, **changes)
    for key in ("micro_batch_size", "bd_micro_batch_size", "global_batch_size", "seq_length",
                "bf16", "distributed_optimizer", "attention_backend"):
        if getattr(args, key) is not None:
            setattr(opts, key, getattr(args, key))
    opts.device = args.device
    if args.recompute is not None:
        opts.recompute = args.recompute
    if args.dp is not None:
        opts.data_parallel_size = args.dp
    else:  # the smallest DP whose world (TP x CP x PP x DP) the expert layout (EP x ETP x PP) divides
        tp = parallel.tensor_model_parallel_size
        experts = parallel.expert_model_parallel_size * (parallel.expert_tensor_parallel_size or tp)
        spread = tp * parallel.context_parallel_size
        opts.data_parallel_size = experts // math.gcd(experts, spread) if experts > 0 else 1
    return name, model, parallel, opts


def _flag_error(args):
    """The first flag whose number means nothing (one line naming the fix), or None."""
    if not (math.isfinite(args.gpu_memory_gb) and args.gpu_memory_gb > 0):
        return f"--gpu-memory-gb {args.gpu_memory_gb} must be a positive number of GiB, e.g. --gpu-memory-gb 80"
    if not (math.isfinite(args.reserved_gb) and 0 <= args.reserved_gb < args.gpu_memory_gb):
        return (f"--reserved-gb {args.reserved_gb} must be >= 0 and below --gpu-memory-gb "
                f"{args.gpu_memory_gb:g}, e.g. --reserved-gb 4")
    for flag in ("global_batch_size", "seq_length"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return f"--{flag.replace('_', '-')} {value} must be >= 1"
    return None


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _table(name, model, parallel, opts, plan, args) -> str:
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    dp, cp = opts.data_parallel_size, parallel.context_parallel_size
    extras = [f"EP {parallel.expert_model_parallel_size}",
              f"expert TP {parallel.expert_tensor_parallel_size or tp}"]
    if parallel.virtual_pipeline_model_parallel_size:
        extras.append(f"VPP {parallel.virtual_pipeline_model_parallel_size}")
    if parallel.sequence_parallel:
        extras.append("SP")
    micro = {k: plan.micro_batches[k] or ">= PP" for k in ("bd", "mdlm")}
    backend = opts.attention_backend or ("flex" if opts.device == "cuda" else "sdpa")
    lines = [
        f"Memory per GPU for {name}: TP {tp} x PP {pp}" + (f" x CP {cp}" if cp > 1 else "")
        + f" x DP {dp} ({', '.join(extras)}; world {tp * pp * cp * dp})",
        f"L {opts.seq_length or model.seq_length}; BD input 2L x micro-batch "
        f"{opts.bd_micro_batch_size or opts.micro_batch_size}, MDLM input L x micro-batch {opts.micro_batch_size}; "
        f"micro-batches per step {micro['bd']} (BD) / {micro['mdlm']} (MDLM)"
        + (f"; x{opts.rows_per_sample} rows per sample (complementary copies)" if opts.rows_per_sample > 1 else ""),
        f"{'bf16' if opts.bf16 else 'fp32'}, {'distributed' if opts.distributed_optimizer else 'replicated'} "
        f"optimizer, recompute {opts.recompute}, attention {backend} ({opts.device})",
        "",
        f"{'stage':>5} {'params':>8} | {'params':>7} {'grads':>7} {'optim':>7} | {'act BD*':>8} "
        f"{'act MDLM*':>9} | {'total BD':>8} {'total MDLM':>10}",
    ]
    for s in plan.stages:
        act = s.activation_bytes
        lines.append(
            f"{s.stage:>5} {s.num_params / 1e9:>7.3f}B | {_gib(s.param_bytes):>7} {_gib(s.grad_bytes):>7} "
            f"{_gib(s.optimizer_bytes):>7} | {_gib(act['bd']):>8} {_gib(act['mdlm']):>9} | "
            f"{_gib(s.total('bd')):>8} {_gib(s.total('mdlm')):>10}")
    usable = args.gpu_memory_gb - args.reserved_gb
    verdict = []
    for layout in ("bd", "mdlm"):
        peak = plan.peak(layout).total(layout) / GIB
        verdict.append(f"{layout.upper()} {'yes' if peak <= usable else 'NO'} ({peak:.1f} GiB)")
    lines += [
        "",
        f"fits on a GPU of {args.gpu_memory_gb:g} GiB with {args.reserved_gb:g} GiB reserved: " + ", ".join(verdict),
        "GiB per GPU on the largest rank of each pipeline stage; params column = parameters on that rank.",
        "* activations are an estimate (megatron_dllm/model/activations.py), measured only on tiny CPU models.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.preset) == bool(args.config):
        parser.error("give exactly one of --preset or --config")
    message = _flag_error(args)
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 2

    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    warnings.filterwarnings("ignore")
    from megatron_dllm.config import ConfigError
    from megatron_dllm.model.memory import check_layout

    try:
        name, model, parallel, opts = _inputs(args)
        auto = opts.recompute == "auto"
        if auto:
            opts.recompute = "none"
        check_layout(model, parallel, opts)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    usable = (args.gpu_memory_gb - args.reserved_gb) * GIB
    init_process_group(setup_device("cpu"))
    try:
        plan, tried = _plan(model, parallel, opts, usable, auto)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown()
    if args.json:
        out = dict(name=name, layout=dict(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            expert_model_parallel_size=parallel.expert_model_parallel_size,
            expert_tensor_parallel_size=parallel.expert_tensor_parallel_size or parallel.tensor_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
            context_parallel_size=parallel.context_parallel_size,
            sequence_parallel=parallel.sequence_parallel, data_parallel_size=opts.data_parallel_size),
            options=dict(vars(opts)), **plan.to_dict(), gpu_memory_gb=args.gpu_memory_gb,
            reserved_gb=args.reserved_gb,
            fits={k: plan.peak(k).total(k) <= usable for k in ("bd", "mdlm")})
        if tried:
            out["recompute_auto"] = {"peak_bytes": tried, "chosen": opts.recompute,
                                     "flags": RECOMPUTE_FLAGS[opts.recompute]}
        print(json.dumps(out, indent=2))
    else:
        print(_table(name, model, parallel, opts, plan, args))
        if tried:
            print(_auto_line(tried, opts.recompute, usable))
    return 0


# What pretraining needs for each modelled mode (selective = Megatron-Core's default, core_attn).
RECOMPUTE_FLAGS = {
    "none": "",
    "selective": "--recompute-granularity selective",
    "full": "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1",
}


def _plan(model, parallel, opts, usable: float, auto: bool):
    """The plan of ``opts``; with ``auto`` the first of none / selective / full that fits
    (``opts.recompute`` is set to it; full when none fits) and the peak bytes of each mode tried."""
    from megatron_dllm.model.memory import plan_memory

    if not auto:
        return plan_memory(model, parallel, opts), {}
    tried = {}
    for mode in ("none", "selective", "full"):
        opts.recompute = mode
        plan = plan_memory(model, parallel, opts)
        tried[mode] = max(plan.peak(k).total(k) for k in ("bd", "mdlm"))
        if tried[mode] <= usable:
            break
    return plan, tried


def _auto_line(tried: dict, chosen: str, usable: float) -> str:
    peaks = ", ".join(f"{mode} {peak / GIB:.1f} GiB" for mode, peak in tried.items())
    if tried[chosen] > usable:
        return (f"recompute auto: nothing fits in {usable / GIB:.1f} GiB ({peaks}): use more GPUs (TP, PP, EP) "
                "or a smaller micro-batch")
    flags = RECOMPUTE_FLAGS[chosen] or "(no recompute flags)"
    return f"recompute auto: {peaks}; chosen {chosen}: pretrain with {flags}"


if __name__ == "__main__":
    sys.exit(main())
