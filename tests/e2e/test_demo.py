"""`make demo`'s pipeline end to end (``--quick``: the same stages on a few iterations)."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.e2e.cli import ROOT, env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run([sys.executable, "-m", "megatron_dllm.demo", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "summary.json") as handle:
        return out, json.load(handle), proc.stdout


def test_progress_is_printed_stage_by_stage(demo):
    out, _, stdout = demo
    for i in range(1, 9):
        assert f"[demo {i}/8]" in stdout
    assert "$ " in stdout and "iteration" in stdout
    commands = [line for line in stdout.splitlines() if line.startswith("$ ")]

    def first(*parts):
        return next(i for i, c in enumerate(commands) if all(p in c for p in parts))

    sft, dpo = first("--dllm-objective sft"), first("--dllm-objective dpo", f"--ref-load {out / 'sft'}")
    # each post-training job starts after the job whose checkpoint it reads
    assert sft < dpo
    assert sft < first("--format chat", f"--load {out / 'sft'}") and sft < first("eval_preference.py",
                                                                                   f"--load {out / 'sft'}")
    assert dpo < first("--format chat", f"--load {out / 'dpo'}") and dpo < first("eval_preference.py",
                                                                                   f"--load {out / 'dpo'}")
    assert "[sft] " in stdout and "[dpo] " in stdout and "[ar_baseline] " in stdout


def test_summary_has_the_post_training_fields(demo):
    _, summary, _ = demo
    sft, dpo = summary["sft"], summary["dpo"]
    assert sft["problems"] == 20 and sft["iterations"] == 4 and sft["block_size"] == 8
    for value in (sft["accuracy_before"], sft["accuracy_after"], dpo["accuracy_after"],
                  dpo["preference_accuracy_before"], dpo["preference_accuracy_after"], dpo["reward_accuracy_after"]):
        assert 0.0 <= value <= 1.0
    assert dpo["pairs"] == 20 and dpo["iterations"] == 2 and dpo["elbo_samples"] == 2
    assert dpo["expert_bias_update_rate"] == 0.0
    assert dpo["vrpo_variance_ratio"] > 0 and dpo["variance_repeats"] == 4 and dpo["variance_pairs"] == 4
    lo, hi = dpo["vrpo_variance_ratio_interval_90"]
    assert 0 < lo <= hi
    for path in (sft["checkpoint"], dpo["checkpoint"]):
        assert os.path.isfile(os.path.join(path, "latest_checkpointed_iteration.txt"))


def test_summary_has_the_quickstart_fields(demo):
    out, summary, _ = demo
    assert isinstance(summary["ar_final_loss"], float)
    phases = summary["dllm_phases"]
    assert [(p["phase"], p["block_size"]) for p in phases] == [("warmup", 1), ("warmup", 4), ("stable", 8)]
    assert phases[0]["iterations"] == phases[1]["iterations"] == 2  # a third of 15, split over 1 and 4
    assert sum(p["iterations"] for p in phases) == 15
    acc = summary["synthetic_task_accuracy"]
    assert 0.0 <= acc["dllm"] <= 1.0 and 0.0 <= acc["ar_baseline"] <= 1.0 and acc["problems"] == 20
    assert 0.0 <= acc["ar_at_conversion"] <= 1.0 and acc["ar_baseline_iterations"] == 12 + 15
    assert acc["dllm_decode_seconds"] > 0 and acc["ar_decode_seconds"] > 0
    assert acc["dllm_model_calls_per_problem"] >= 1 and 1 <= acc["ar_model_calls_per_problem"] <= 4
    best = summary["best_variant"]
    assert best["flags"] == ["--dllm-token-shift"] and not best["llada2_compatible"]
    assert 0.0 <= best["accuracy"] <= 1.0 and best["decode_seconds"] > 0
    assert len(summary["samples"]) == 3
    for sample in summary["samples"]:
        assert set(sample) == {"prompt", "text", "tokens_per_forward"} and sample["tokens_per_forward"] >= 1.0
    sweep = {r["threshold"]: r["tokens_per_forward"] for r in summary["tokens_per_forward_by_threshold"]}
    assert sweep[1.0] == 1.0 and sweep[0.1] >= 1.0
    assert glob.glob(os.path.join(summary["tensorboard_dir"], "**", "events.out.tfevents.*"), recursive=True)


def test_nelbo_falls_from_conversion_to_the_end_of_training(demo):
    _, summary, _ = demo
    assert summary["dllm_final_valid_nelbo"] < summary["dllm_valid_nelbo_after_conversion"]


def test_paths_in_the_summary_work_with_the_tools(demo):
    _, summary, _ = demo
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "generate.py"),
                           "--load", summary["dllm_checkpoint"], "--tokenizer-model", summary["tokenizer_model"],
                           "--prompt", "Return the", "--gen-length", "8", "--block-length", "8", "--json",
                           "--device", "cpu"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["decoder"] == "diffusion" and record["num_tokens"] <= 8
