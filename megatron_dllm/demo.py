"""`make demo`: run the main job on an embedded default and summarise it.

Pretrains the tiny MoE dLLM of ``examples/configs/tiny_moe_cpu.yaml`` on deterministic synthetic
documents through the whole block-size curriculum (warm-up 1 -> 4 -> 16 -> 32, stable at L = 64,
decay 32 -> 16 -> 8), with checkpoints, TensorBoard logs and metrics.jsonl under ``runs/demo``, then
writes ``runs/demo/summary.json``. The full quickstart (real-text corpus, tokenizer, AR pretraining,
conversion, generation) is not part of it yet: it needs the converter and the decoder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "configs", "tiny_moe_cpu.yaml")


def summarize(out_dir: str) -> dict:
    """Phases, losses and validation NELBOs read back from metrics.jsonl."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    phases = []
    for r in train:
        if not phases or (phases[-1]["phase"], phases[-1]["block_size"]) != (r["phase"], r["block_size"]):
            phases.append({"phase": r["phase"], "block_size": r["block_size"], "iterations": 0})
        phases[-1]["iterations"] += 1
    first = train[:4]
    last = train[-10:]
    return {
        "config": os.path.relpath(CONFIG, ROOT),
        "dllm_phases": phases,
        "train_loss_first_4_mean": sum(r["loss"] for r in first) / len(first),
        "train_loss_last_10_mean": sum(r["loss"] for r in last) / len(last),
        "valid_nelbo": [{"iteration": r["iteration"], "block_size": r["block_size"], "nelbo": r["nelbo"]}
                        for r in valid],
        "dllm_checkpoint": os.path.join(out_dir, "ckpt"),
        "tensorboard_dir": os.path.join(out_dir, "tb"),
        "metrics": os.path.join(out_dir, "metrics.jsonl"),
    }


def main(argv=None) -> int:
    out_dir = os.path.join(ROOT, "runs", "demo")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    print("megatron_dllm demo: pretraining the tiny MoE dLLM through warm-up -> stable -> decay "
          f"(config {os.path.relpath(CONFIG, ROOT)}, synthetic data); outputs in runs/demo", flush=True)
    from megatron_dllm.pretrain import main as pretrain

    start = time.time()
    rc = pretrain(["--config", CONFIG, "--mock-data",
                   "--save", os.path.join(out_dir, "ckpt"),
                   "--tensorboard-dir", os.path.join(out_dir, "tb"),
                   "--metrics-path", os.path.join(out_dir, "metrics.jsonl")])
    if rc != 0:
        print(f"demo: pretraining failed with exit code {rc}", file=sys.stderr)
        return rc
    summary = summarize(out_dir)
    summary["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))
    print("Look at the curves with: .venv/bin/tensorboard --logdir runs/demo/tb", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
