"""Benchmark: activation recompute (``--recompute-*``), peak memory and step time of each mode.

Each mode runs in a fresh process with the normal run set-up (``parse_args`` -> ``check_run`` ->
``setup_run``, ``--mock-data``) on the step benchmark's ``cpu-moe`` model: one warm optimizer step
(allocates the optimizer state), then the peak memory added by the next forward + backward of a
block-diffusion step (input [xt ; x0], 2L tokens), then its time over a few more forward + backward
passes. ``tools/plan_memory.py``'s activation model for the same shapes is printed beside the
measurement (CPU, fp32, torch composite norms).

    python bench/recompute.py [--seq-length 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from step_overhead import MODELS  # noqa: E402

MODES = {
    "none": [],
    "selective_core_attn": ["--recompute-granularity", "selective"],
    "selective_moe": ["--recompute-granularity", "selective", "--recompute-modules", "moe", "core_attn"],
    "full_uniform_1": ["--recompute-granularity", "full", "--recompute-method", "uniform",
                       "--recompute-num-layers", "1"],
}
PLAN_MODE = {"none": "none", "selective_core_attn": "selective", "selective_moe": None, "full_uniform_1": "full"}


def _flags(seq_length: int, micro_batch: int) -> list:
    return MODELS["cpu-moe"] + [
        "--mock-data", "--device", "cpu", "--seq-length", str(seq_length), "--micro-batch-size",
        str(micro_batch), "--global-batch-size", str(micro_batch), "--train-iters", "100",
        "--dllm-objective", "bd", "--dllm-block-schedule", "stable:32@inf", "--log-interval", "1000"]


def worker(args) -> dict:
    warnings.filterwarnings("ignore")
    common.release_freed_memory_eagerly()
    import torch

    from megatron_dllm.arguments import parse_args
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group
    from megatron_dllm.data.microbatches import micro_batches
    from megatron_dllm.objectives import StepContext
    from megatron_dllm.train.engine import data_parallel, forward_backward
    from megatron_dllm.train.loop import run_step
    from megatron_dllm.train.preflight import check_run
    from megatron_dllm.train.setup import setup_run

    torch.set_num_threads(args.threads or 1)
    setup_device("cpu")
    init_process_group("cpu")
    run = parse_args(_flags(args.seq_length, args.micro_batch_size) + MODES[args.mode])
    check_run(run, 1)
    setup = setup_run(run, "cpu")
    objective, block, _ = setup.objective.phase_at(0)
    run_step(setup, objective, block)  # warm: optimizer state exists from here on
    batches = micro_batches(setup.datasets[0], 0, run.training.global_batch_size, objective.micro_batch_size,
                            *data_parallel())

    def fwd_bwd():
        forward_backward(objective.forward_step(StepContext(iteration=1, block_size=block)), batches, setup.model,
                         setup.optimizer, num_microbatches=len(batches), seq_length=objective.model_seq_length,
                         micro_batch_size=objective.micro_batch_size)

    with common.peak_memory("cpu") as pm:
        fwd_bwd()
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        fwd_bwd()
        times.append(time.perf_counter() - start)
    return {"mode": args.mode, "layout": objective.layout, "added_mib": round(pm.added_mib, 1),
            "peak_reset_ok": pm.reset_ok, "fwd_bwd_s": common.summary(times),
            "recompute": setup.model[0].config.recompute_granularity}


def planned_activation_mib(seq_length: int, micro_batch: int) -> dict:
    """plan_memory's activation model for the same run (per micro-batch, BD layout), by mode."""
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.model import activations

    run = parse_args(_flags(seq_length, micro_batch))
    out = {}
    cfg = run.model
    for mode, plan in PLAN_MODE.items():
        if plan is None:
            continue
        env = activations.ActivationEnv(act_bytes=4, fused_norm=False, backend="sdpa", recompute=plan)
        total, _ = activations.stage_bytes(
            cfg, cfg.moe_layer_pattern() or [0] * cfg.num_layers, env, seq=2 * seq_length,
            micro_batch=micro_batch, loss_positions=seq_length, logit_positions=seq_length,
            vocab_per_rank=cfg.padded_vocab_size(1), pp_rank=0, pp=1, vpp=1, num_microbatches=1)
        out[mode] = round(total / 2 ** 20, 1)
    return out


def run(seq_length=1024, micro_batch_size=2, rounds=3, threads=1, timeout=1200) -> dict:
    results = {}
    for mode in MODES:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--seq-length",
               str(seq_length), "--micro-batch-size", str(micro_batch_size), "--rounds", str(rounds),
               "--threads", str(threads)]
        common.log(f"recompute: {mode}")
        results[mode] = common.run_json(cmd, timeout=timeout)
    base = results["none"]
    ratios = {}
    for mode, res in results.items():
        if mode == "none" or "added_mib" not in res or "added_mib" not in base:
            continue
        ratios[f"mem_{mode}_over_none"] = round(res["added_mib"] / max(base["added_mib"], 1e-3), 3)
        ratios[f"time_{mode}_over_none"] = round(res["fwd_bwd_s"]["median"] / base["fwd_bwd_s"]["median"], 3)
    try:
        plan = planned_activation_mib(seq_length, micro_batch_size)
    except Exception as exc:  # the plan is context, not the measurement
        plan = {"error": f"{exc.__class__.__name__}: {exc}"}
    return {"seq_length": seq_length, "micro_batch_size": micro_batch_size, "model": "cpu-moe",
            "modes": results, "ratios": ratios, "planned_activation_mib": plan}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--micro-batch-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        common.emit_json(worker(args))
        return 0
    result = run(args.seq_length, args.micro_batch_size, args.rounds, args.threads)
    print(json.dumps(result, indent=2))
    return 0 if all("added_mib" in r for r in result["modes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
