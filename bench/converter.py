"""Benchmark 3: the AR -> dLLM checkpoint converter against ``cp -r`` of the same directory.

An AR checkpoint is written by the normal entry point (``python -m megatron_dllm.pretrain
--dllm-objective ar --train-iters 1 --save DIR`` on a MoE of the size chosen below), then converted by
``tools/convert_ar_to_dllm.py --load DIR --save OUT`` under ``/usr/bin/time -v`` (wall time and
"Maximum resident set size"), alternating with ``cp -r DIR COPY`` rounds. The converter's fixed cost
(interpreter + the imports it makes) is reported beside it.

If the converter does not exist yet, the result is ``{"status": "converter not available"}``.

    python bench/converter.py [--size small|medium] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

TOOL = os.path.join(common.ROOT, "tools", "convert_ar_to_dllm.py")
TIME = "/usr/bin/time"

# AR source models. "small": the step benchmark's CPU MoE (19M parameters: 4 layers, hidden 256,
# 8 experts top-2, vocabulary 8192). "medium": 8 layers, hidden 512, 16 experts (~150M parameters).
SIZES = {
    "small": ["--preset", "tiny-moe", "--num-layers", "4", "--hidden-size", "256", "--ffn-hidden-size", "1024",
              "--num-attention-heads", "4", "--num-query-groups", "2", "--kv-channels", "64",
              "--vocab-size", "8192", "--moe-ffn-hidden-size", "512",
              "--moe-shared-expert-intermediate-size", "512"],
    "medium": ["--preset", "tiny-moe", "--num-layers", "8", "--hidden-size", "512", "--ffn-hidden-size", "2048",
               "--num-attention-heads", "8", "--num-query-groups", "2", "--kv-channels", "64",
               "--vocab-size", "32000", "--moe-ffn-hidden-size", "512", "--num-experts", "16",
               "--moe-router-num-groups", "4", "--moe-shared-expert-intermediate-size", "512"],
}


STARTUP = ("import torch, megatron.core, megatron_dllm.convert.convert, megatron_dllm.platform.device, "
           "megatron_dllm.platform.distributed")


def converter_available() -> bool:
    return os.path.isfile(TOOL)


def dir_size_mib(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            fp = os.path.join(root, name)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total / 2 ** 20


def _parse_time_v(stderr: str) -> dict:
    """Wall seconds and peak RSS (MiB) from GNU time -v output."""
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if m:
        out["peak_rss_mib"] = int(m.group(1)) / 1024.0
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", stderr)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        secs = 0.0
        for p in parts:
            secs = secs * 60 + p
        out["wall_s"] = secs
    return out


def _timed_run(cmd, env, timeout) -> dict:
    """Run ``cmd`` under /usr/bin/time -v when present; wall seconds, peak RSS, return code."""
    use_time = os.path.exists(TIME)
    full = ([TIME, "-v"] if use_time else []) + cmd
    start = time.perf_counter()
    proc = subprocess.run(full, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    info = _parse_time_v(proc.stderr) if use_time else {}
    info["wall_s"] = wall  # measured here (same clock as cp); time -v's value is coarser
    info["returncode"] = proc.returncode
    if proc.returncode != 0:
        info["stderr_tail"] = proc.stderr[-2000:]
        info["stdout_tail"] = proc.stdout[-1000:]
    return info


def write_ar_checkpoint(directory: str, size: str, env, timeout=900) -> dict:
    cmd = [sys.executable, "-m", "megatron_dllm.pretrain", *SIZES[size], "--seq-length", "64",
           "--mock-data", "--device", "cpu", "--dllm-objective", "ar", "--train-iters", "1",
           "--micro-batch-size", "4", "--global-batch-size", "8", "--save", directory, "--log-interval", "1"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 2),
            "cmd": " ".join(cmd[1:]), "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}


def run(size="small", rounds=2, timeout=900, keep=False) -> dict:
    if not converter_available():
        common.log("converter: tools/convert_ar_to_dllm.py not found")
        return {"status": "converter not available",
                "detail": "tools/convert_ar_to_dllm.py does not exist in this tree yet (issue 5)"}
    env = common.bench_env({"OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1"})
    work = tempfile.mkdtemp(prefix="bench_convert_")
    try:
        src = os.path.join(work, "ar")
        common.log(f"converter: writing the {size} AR checkpoint")
        made = write_ar_checkpoint(src, size, env, timeout)
        if made["returncode"] != 0:
            return {"status": "failed", "stage": "write AR checkpoint", **made}
        ckpt_mib = dir_size_mib(src)
        # Fixed cost of any converter run: the interpreter and the imports the tool makes.
        startup = _timed_run([sys.executable, "-c", STARTUP], env, timeout)
        conv, cp = [], []
        last = {}
        for r in range(rounds):
            out = os.path.join(work, f"dllm{r}")
            common.log(f"converter: round {r + 1}/{rounds}")
            last = _timed_run([sys.executable, TOOL, "--load", src, "--save", out], env, timeout)
            if last["returncode"] != 0:
                return {"status": "failed", "stage": "convert", "checkpoint_mib": round(ckpt_mib, 1),
                        "cmd": f"tools/convert_ar_to_dllm.py --load AR --save OUT", **last}
            conv.append(last)
            out_mib = dir_size_mib(out)
            shutil.rmtree(out, ignore_errors=True)
            dst = os.path.join(work, f"copy{r}")
            cp.append(common.timed(lambda: subprocess.run(["cp", "-r", src, dst], check=True)))
            shutil.rmtree(dst, ignore_errors=True)
        conv_s = [c["wall_s"] for c in conv]
        rss = [c.get("peak_rss_mib") for c in conv if c.get("peak_rss_mib") is not None]
        result = {
            "status": "ok",
            "source": {"size": size, "flags": SIZES[size], "checkpoint_mib": round(ckpt_mib, 1),
                       "write_cmd": made["cmd"], "write_s": made["wall_s"]},
            "output_mib": round(out_mib, 1),
            "convert_s": common.summary(conv_s),
            "cp_s": common.summary(cp),
            "converter_startup_s": round(startup["wall_s"], 2),
            "startup_peak_rss_mib": round(startup.get("peak_rss_mib", 0.0), 1),
            "peak_rss_mib": round(max(rss), 1) if rss else None,
            "ratios": {
                "convert_over_cp": round(common.paired_ratio(conv_s, cp), 1),
                "convert_minus_startup_over_cp": round(
                    common.paired_ratio([c - startup["wall_s"] for c in conv_s], cp), 1),
                "peak_rss_over_checkpoint_size": round(max(rss) / ckpt_mib, 2) if rss and ckpt_mib else None,
                # working memory beyond the interpreter and imports, per MiB of converted weights
                "peak_rss_above_startup_over_output_size": (
                    round((max(rss) - startup.get("peak_rss_mib", 0.0)) / out_mib, 2) if rss and out_mib else None),
            },
            "cmd": "/usr/bin/time -v python tools/convert_ar_to_dllm.py --load AR_DIR --save OUT_DIR",
        }
        return result
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the temporary checkpoints")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    res = run(args.size, args.rounds, keep=args.keep)
    if args.json_out:
        common.write_json(args.json_out, res)
    import report

    print(report.converter_table(res))
    return 0 if res.get("status") in ("ok", "converter not available") else 1


if __name__ == "__main__":
    sys.exit(main())
