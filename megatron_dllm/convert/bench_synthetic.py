"""Peak memory and speed of the converter on a synthetic multi-GB AR checkpoint, next to ``cp -r``.

    python -m megatron_dllm.convert.bench_synthetic --dir /tmp/bench [--format torch_dist|torch] [--keep]

1. writes (in a child process) a ~2.4 GB fp32 AR checkpoint of a mid-size LLaDA2-style MoE (1 dense +
   5 MoE layers, 32 experts, Ling vocabulary 157184 x 1024, so the embedding is the largest tensor):
   ``torch_dist`` with Megatron-Core's ``dist_checkpointing.save``, or a legacy ``model_optim_rng.pt``;
2. runs ``/usr/bin/time -v cp -r SRC COPY`` and ``/usr/bin/time -v tools/convert_ar_to_dllm.py``;
3. prints wall time and peak RSS of both, the largest tensor, and the bound 2 x largest + 1 GiB.

Not part of the test suite (minutes, GBs of disk). Check ``df -h`` first; ``--keep`` keeps the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench_config():
    from megatron_dllm.model.presets import get_preset

    return dataclasses.replace(
        get_preset("llada2.0-mini"), num_layers=6, hidden_size=1024, ffn_hidden_size=2816,
        num_attention_heads=8, num_query_groups=2, kv_channels=128, seq_length=256, max_position_embeddings=256,
        num_experts=32, moe_ffn_hidden_size=512, moe_shared_expert_intermediate_size=512,
        moe_router_num_groups=4, moe_router_group_topk=2, moe_router_topk=4)


def write_source(out: str, fmt: str) -> dict:
    """Build the bench model (random weights) on one rank and save it as an AR checkpoint."""
    import torch

    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_model_parallel, init_process_group, teardown

    setup_device("cpu")
    init_process_group("cpu")
    cfg = bench_config()
    init_model_parallel(ParallelConfig())
    model = build_model(cfg, ParallelConfig(), causal=True)
    params = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    directory = os.path.join(out, "iter_0000001")
    os.makedirs(directory, exist_ok=True)
    if fmt == "torch_dist":
        from megatron.core import dist_checkpointing

        meta = {"iteration": 1, "run": {"model": dataclasses.asdict(cfg)}, "objective": "ar"}
        dist_checkpointing.save(model.sharded_state_dict(), directory)
        with open(os.path.join(directory, "dllm_meta.json"), "w") as handle:
            json.dump(meta, handle)
    else:
        args = argparse.Namespace(**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "moe_first_k_dense"})
        args.moe_layer_freq = cfg.moe_layer_pattern()
        args.group_query_attention, args.padded_vocab_size, args.position_embedding_type = True, 157184, "rope"
        args.tensor_model_parallel_size = args.pipeline_model_parallel_size = args.expert_model_parallel_size = 1
        state = {k: v for k, v in model.state_dict_for_save_checkpoint().items() if isinstance(v, torch.Tensor)}
        rank_dir = os.path.join(directory, "mp_rank_00")
        os.makedirs(rank_dir)
        torch.save({"model": state, "args": args, "iteration": 1, "checkpoint_version": 3.0},
                   os.path.join(rank_dir, "model_optim_rng.pt"))
    with open(os.path.join(out, "latest_checkpointed_iteration.txt"), "w") as handle:
        handle.write("1")
    teardown()
    return {"params": params, "largest_tensor_bytes": largest}


def _timed(cmd) -> dict:
    """Wall time, CPU seconds (user + system) and peak RSS of ``cmd`` (GNU time); ``stdout`` kept."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    cpu = sum(float(re.search(rf"{what} time \(seconds\): (\S+)", proc.stderr).group(1)) for what in ("User", "System"))
    return {"peak_rss_bytes": rss, "wall_s": round(seconds, 2), "cpu_s": round(cpu, 2), "stdout": proc.stdout}


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="Scratch directory (needs ~3x the checkpoint size free).")
    p.add_argument("--format", default="torch_dist", choices=["torch_dist", "torch"])
    p.add_argument("--keep", action="store_true", help="Keep the files afterwards.")
    p.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    src = os.path.join(args.dir, "ar")
    if args.write_only:
        print(json.dumps(write_source(src, args.format)))
        return 0
    if os.path.exists(args.dir):
        print(f"error: {args.dir} exists: give a new scratch directory", file=sys.stderr)
        return 2
    os.makedirs(args.dir)
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONWARNINGS="ignore")
    try:
        made = subprocess.run([sys.executable, "-m", "megatron_dllm.convert.bench_synthetic", "--dir", args.dir,
                               "--format", args.format, "--write-only"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(made.stderr[-4000:])
        info = json.loads(made.stdout.strip().splitlines()[-1])
        size = _du(src)
        copy = _timed(["cp", "-r", src, os.path.join(args.dir, "copy")])
        copy_sync = _timed(["sh", "-c", f"cp -r {src} {os.path.join(args.dir, 'copy2')} && sync"])
        convert = _timed([sys.executable, os.path.join(ROOT, "tools", "convert_ar_to_dllm.py"), "--load", src,
                          "--save", os.path.join(args.dir, "dllm"), "--mask-token-id", "156895", "--quiet"])
        summary = json.loads(convert.pop("stdout").split("resume with")[0].split("\n", 2)[2])
        convert["tensor_phase_s"] = summary["seconds"]  # reading + writing, without start-up
        for run in (copy, copy_sync):
            run.pop("stdout")
        bound = 2 * info["largest_tensor_bytes"] + (1 << 30)
        report = {"format": args.format, "checkpoint_bytes": size, "params": info["params"],
                  "largest_tensor_bytes": info["largest_tensor_bytes"], "bound_bytes": bound,
                  "convert": convert, "cp_r": copy, "cp_r_and_sync": copy_sync,
                  "within_bound": convert["peak_rss_bytes"] <= bound,
                  "convert_GBps": round(size / convert["wall_s"] / 1e9, 3),
                  "convert_tensor_phase_GBps": round(size / convert["tensor_phase_s"] / 1e9, 3),
                  "cp_GBps": round(size / copy["wall_s"] / 1e9, 3),
                  "cp_and_sync_GBps": round(size / copy_sync["wall_s"] / 1e9, 3)}
        print(json.dumps(report, indent=2))
        return 0 if report["within_bound"] else 1
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
