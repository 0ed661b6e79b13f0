"""Run every CPU benchmark, write bench/results/latest.json and the tables of BENCHMARKS.md.

    python bench/run.py --quick        # < 10 minutes on 2 cores
    python bench/run.py                # fuller: LLaDA2.0-mini's 16/4 heads, more rounds, bigger checkpoint
    python bench/run.py --only attention step_overhead

Sections (each a module of bench/ that can also run alone):
    attention      BD attention fwd+bwd, ours vs megatron-core local vs dense-mask SDPA (attention.py)
    step_overhead  optimizer-step time of MDLM / BD layouts against the AR objective (step_overhead.py)
    converter      AR -> dLLM converter vs cp -r, peak RSS (converter.py)

Every section's result holds a ``ratios`` entry; ``goals`` lists each goal with the measured value.
Threads: 1 torch thread by default (``--threads``). On a 2-core machine shared with other jobs,
2 threads make every OpenMP barrier wait for a core the other jobs hold, and step times then vary by
up to 10x between identical steps; with 1 thread they vary by ~20%. Ratios are what the goals judge.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attention  # noqa: E402
import common  # noqa: E402
import converter  # noqa: E402
import report  # noqa: E402
import step_overhead  # noqa: E402

SECTIONS = ("attention", "step_overhead", "converter")

PLANS = {
    # quick: per-rank head layout of LLaDA2.0-mini at TP = 4 (4 query / 1 KV head x 128).
    "quick": {"attention": dict(seqs=[1024, 2048, 4096], heads=4, groups=1, head_dim=128, rounds=3,
                                prototypes=True),
              "step_overhead": dict(model="cpu-moe", seq_length=512, micro_batch_size=2, global_batch_size=4,
                                    rounds=5, warmup=1, prototypes=True),
              "converter": dict(size="medium", rounds=2)},
    # full: LLaDA2.0-mini's whole head layout (16 query / 4 KV heads x 128).
    "full": {"attention": dict(seqs=[1024, 2048, 4096], heads=16, groups=4, head_dim=128, rounds=5,
                               prototypes=True),
             "step_overhead": dict(model="cpu-moe", seq_length=512, micro_batch_size=2, global_batch_size=4,
                                   rounds=7, warmup=1, prototypes=True),
             "converter": dict(size="medium", rounds=3)},
}


def command_lines(plan: dict, threads: int, quick: bool) -> list:
    a, s, c = plan["attention"], plan["step_overhead"], plan["converter"]
    return [
        f"python bench/run.py{' --quick' if quick else ''} --threads {threads}",
        f"  = python bench/attention.py --seq {' '.join(map(str, a['seqs']))} --heads {a['heads']} "
        f"--groups {a['groups']} --head-dim {a['head_dim']} --rounds {a['rounds']} --threads {threads}"
        + (" --prototypes" if a.get("prototypes") else ""),
        f"  + python bench/step_overhead.py --model {s['model']} --seq-length {s['seq_length']} "
        f"--micro-batch-size {s['micro_batch_size']} --global-batch-size {s['global_batch_size']} "
        f"--rounds {s['rounds']} --warmup {s['warmup']} --threads {threads}"
        + (" --prototypes" if s.get("prototypes") else ""),
        f"  + python bench/converter.py --size {c['size']} --rounds {c['rounds']}",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the < 10 minute plan")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections; keep the others from "
                   "the existing results file")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the workers (0: torch default)")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "latest.json"))
    p.add_argument("--markdown", default=os.path.join(common.ROOT, "BENCHMARKS.md"),
                   help="file whose generated block is rewritten ('' to skip)")
    args = p.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    start = time.perf_counter()
    previous = report.load(args.out) if args.only else None
    results = dict(previous or {})
    results.update({"date": common.now_iso(), "machine": common.machine_info(), "threads": args.threads,
                    "plan": "quick" if args.quick else "full",
                    "commands": command_lines(plan, args.threads, args.quick)})
    todo = args.only or SECTIONS
    if "attention" in todo:
        results["attention"] = attention.run(device="cpu", threads=args.threads, **plan["attention"])
    if "step_overhead" in todo:
        results["step_overhead"] = step_overhead.run(device="cpu", threads=args.threads, **plan["step_overhead"])
    if "converter" in todo:
        results["converter"] = converter.run(**plan["converter"])
    goals = []
    goals += results.get("attention", {}).get("goals", [])
    goals += results.get("step_overhead", {}).get("goals", [])
    results["goals"] = goals
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = round(time.perf_counter() - start, 1)
    if args.only and previous:
        results["wall_s_note"] = f"only {', '.join(args.only)} rerun"
    common.write_json(args.out, results)
    common.log(f"wrote {args.out} ({results['wall_s']:.0f} s)")
    if args.markdown:
        gpu = report.load(os.path.join(os.path.dirname(args.out), "gpu_latest.json"))
        report.update_markdown(args.markdown, results, gpu)
        common.log(f"updated {args.markdown}")
    print(report.goals_table(goals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
