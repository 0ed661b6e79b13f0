"""GPU benchmarks (what bench/gpu.sh runs): < 8 minutes on one H100.

    1. BD attention fwd+bwd at 2L in {1024, 2048, 4096, 8192}, LLaDA2.0-mini heads (16 q / 4 kv x 128),
       bf16: ours (compiled FlexAttention + block-sparse BlockMask), ours with SDPA + dense bool mask,
       megatron-core local DotProductAttention, SDPA + dense float mask. Goal: Flex >= 2.5x faster
       than dense-mask SDPA at 2L = 8192.
    2. Training steps of a ~1B-active MoE dLLM (step_overhead.py --model gpu-1b): AR / MDLM / BD step
       time, ratios, noise + mask share, model FLOPs and MFU against the GPU's dense bf16 peak.
    3. The same steps on Transformer Engine's layers (--model gpu-1b-te: --transformer-impl
       transformer_engine --moe-grouped-gemm), when TE is installed: step time and MFU, TE vs local.
    4. Context parallelism (bench/cp_attention.py --device cuda): per-rank attention time and memory at
       CP 2 / 4 vs CP 1, 2L = 8192 under the BD mask with documents (each rank's rows of the BlockMask
       against all keys, compiled FlexAttention, bf16). Goal: <= 0.6x at CP 2, <= 0.35x at CP 4.

Writes bench/results/gpu_latest.json and prints the tables. Each stage gets a share of the time
budget (``--budget-s``); a stage that runs out is reported as skipped, never silently dropped.

    python bench/gpu.py              # on a CUDA machine
    python bench/gpu.py --dry-run    # anywhere: parse, plan, count the model's FLOPs (no GPU needed)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attention  # noqa: E402
import common  # noqa: E402
import report  # noqa: E402
import step_overhead  # noqa: E402

PLAN = {
    # 8192 first: the Flex-vs-SDPA goal is measured there, so it runs before the budget can run out.
    "attention": dict(seqs=[8192, 1024, 2048, 4096], heads=16, groups=4, head_dim=128, block=32, rounds=10),
    "step_overhead": dict(model="gpu-1b", seq_length=2048, micro_batch_size=1, global_batch_size=8,
                          block=32, rounds=3, warmup=1, prototypes=True),
    "context_parallel": ["--device", "cuda", "--seq", "8192", "--heads", "16", "--groups", "4", "--head-dim", "128",
                         "--block", "32", "--cp", "2", "4", "--rounds", "5"],
}


def commands(budget: float) -> list:
    a, s = PLAN["attention"], PLAN["step_overhead"]
    return [
        f"bash bench/gpu.sh   (= python bench/gpu.py --budget-s {budget:.0f})",
        f"  = python bench/attention.py --device cuda --seq {' '.join(map(str, a['seqs']))} --heads {a['heads']} "
        f"--groups {a['groups']} --head-dim {a['head_dim']} --block {a['block']} --rounds {a['rounds']}",
        f"  + python bench/step_overhead.py --device cuda --model {s['model']} --seq-length {s['seq_length']} "
        f"--micro-batch-size {s['micro_batch_size']} --global-batch-size {s['global_batch_size']} "
        f"--block {s['block']} --rounds {s['rounds']} --warmup {s['warmup']} --prototypes",
        "  + python bench/cp_attention.py " + " ".join(PLAN["context_parallel"]),
    ]


def dry_run() -> int:
    """Check everything that needs no GPU: the plan, the peak table, the FLOP count of the model."""
    budget = 450.0
    print("\n".join(commands(budget)))
    for name, expect in (("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                         ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12)):
        got = step_overhead.peak_flops(name)
        assert got == expect, f"peak table: {name} -> {got}, expected {expect}"
        print(f"peak bf16 {name}: {got / 1e12:.0f} TFLOP/s")
    res = step_overhead.run(device="cuda", dry_run=True, timeout=600, **PLAN["step_overhead"])
    if res.get("status") == "failed":
        print(res.get("stderr_tail", ""), file=sys.stderr)
        return 1
    print(report.step_table(res))
    p, f = res["params"], res["flops_per_step"]
    assert 0.8e9 <= p["active_params"] <= 1.2e9, f"gpu-1b should have ~1B active parameters: {p}"
    assert f["ar"] < f["mdlm"] < f["bd"], f"FLOPs should grow ar < mdlm < bd: {f}"
    for lay in ("ar", "mdlm", "bd"):
        per_token = f[lay] / (res["global_batch_size"] * res["seq_length"])
        print(f"{lay}: {per_token / 1e9:.2f} GFLOP per clean token "
              f"(6 x active incl. input embedding = {6 * p['active_params'] / 1e9:.2f}); at 40% MFU on an H100 SXM a step would take "
              f"{f[lay] / (0.4 * 989e12):.2f} s")
    print("dry run ok")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget-s", type=float, default=450.0, help="overall time budget (default 7.5 min)")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "gpu_latest.json"))
    args = p.parse_args(argv)
    if args.dry_run:
        return dry_run()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (use --dry-run to check the plan on CPU)", file=sys.stderr)
        return 2
    start = time.monotonic()
    deadline = start + args.budget_s
    results = {"date": common.now_iso(), "machine": common.machine_info(), "commands": commands(args.budget_s)}
    # Attention gets up to 35% of the budget, the local-layer steps up to 70%, the TE steps the rest.
    results["attention"] = attention.run(device="cuda", deadline=start + 0.35 * args.budget_s, timeout=150,
                                         **PLAN["attention"])
    results["step_overhead"] = step_overhead.run(device="cuda", deadline=start + 0.70 * args.budget_s,
                                                 timeout=args.budget_s, **PLAN["step_overhead"])
    results["step_overhead_te"] = _te_steps(start + 0.85 * args.budget_s, args.budget_s)
    results["context_parallel"] = _cp_attention(deadline)
    goals = list(results["attention"].get("goals", [])) + list(results["step_overhead"].get("goals", []))
    step = results["step_overhead"]
    results["goals"] = goals  # MFU has no goal: it is reported in the step table
    results["wall_s"] = round(time.monotonic() - start, 1)
    common.write_json(args.out, results)
    print(f"## GPU benchmarks ({results['machine'].get('cuda')}, {results['wall_s']:.0f} s)\n")
    print(report.goals_table(goals) + "\n")
    print(report.attention_table(results["attention"]) + "\n")
    print(report.step_table(step))
    te = results["step_overhead_te"]
    if "step_s" not in te:
        print(f"\nTransformer Engine steps: {te.get('status')} {te.get('reason', te.get('error', ''))}")
    else:
        print("\nTransformer Engine layers (--transformer-impl transformer_engine --moe-grouped-gemm):")
        print(report.step_table(te))
        print(_te_ratios(step, te))
    cp = results["context_parallel"]
    print("\nContext parallelism, per-rank attention vs CP 1:\n" + cp.get("table", f"{cp.get('status')} "
                                                                        f"{cp.get('reason', '')}"))
    print(f"\nwrote {args.out}")
    return 0


def _te_steps(deadline: float, budget: float) -> dict:
    """Stage 3: the step benchmark on TE's layers, or why it did not run (never silently dropped)."""
    from megatron_dllm.model.transformer_config import transformer_engine_installed

    if not transformer_engine_installed():
        return {"status": "skipped", "reason": "Transformer Engine is not installed on this machine"}
    if deadline - time.monotonic() < 30:
        return {"status": "skipped", "reason": "the time budget ran out before this stage"}
    plan = dict(PLAN["step_overhead"], model="gpu-1b-te", prototypes=False)
    return step_overhead.run(device="cuda", deadline=deadline, timeout=budget, **plan)


def _cp_attention(deadline: float) -> dict:
    """Stage 4: bench/cp_attention.py on CUDA in a subprocess, or why it did not run."""
    import json
    import subprocess
    import tempfile

    left = deadline - time.monotonic()
    if left < 30:
        return {"status": "skipped", "reason": "the time budget ran out before this stage"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cp.json")
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cp_attention.py"),
               *PLAN["context_parallel"], "--json", out]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            return {"status": "skipped", "reason": f"did not finish in the {left:.0f} s left"}
        if proc.returncode != 0:
            return {"status": "failed", "reason": proc.stderr[-2000:]}
        with open(out) as handle:
            result = json.load(handle)
    result["table"] = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("|", "cp1", "2L")))
    return result


def _te_ratios(local: dict, te: dict) -> str:
    """Step time local / TE per layout, from the two stages' medians."""
    parts = []
    for layout in ("ar", "mdlm", "bd"):
        a = local.get("step_s", {}).get(layout, {}).get("median")
        b = te.get("step_s", {}).get(layout, {}).get("median")
        if a and b:
            parts.append(f"{layout} {a / b:.2f}x")
    return "step time local / TE: " + (", ".join(parts) if parts else "n/a (a stage did not finish)")


if __name__ == "__main__":
    sys.exit(main())
