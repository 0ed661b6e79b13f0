"""NaN / Inf: training stops with one line and exit 3 or skips the update, keeps every finite checkpoint
and writes no other; tools/evaluate.py and tools/export_hf.py refuse non-finite weights (issue 13, item 3).

``--lr 1e6`` on the tiny MoE run: the first update (warm-up LR 0) is harmless, the second blows the
weights up (still finite), and the gradient of the third is NaN.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from megatron_dllm.train.evaluation import json_safe
from megatron_dllm.train.nonfinite import EXIT_NONFINITE, step_problem
from tests.distributed.harness import run_ranks
from tests.e2e.cli import ROOT, TINY, env, metrics, pretrain
from tests.reliability import training_workers as workers

DIVERGE = ["--config", TINY, "--mock-data", "--train-iters", "20", "--lr", "1e6", "--save-interval", "1",
           "--ckpt-keep-last", "0"]
FIX = "lower --lr, or pass --skip-nonfinite-iters N to skip up to N such iterations"
PROBLEM = r"(?:loss|grad norm) is (?:nan|inf|-inf)"


def _errors(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _meta(save, iteration):
    from megatron_dllm.checkpoint import state as checkpointing

    return checkpointing.read_meta(str(save), iteration)


def _iterations_on_disk(save):
    return sorted(int(p.name[5:]) for p in save.iterdir() if p.name.startswith("iter_") and p.name[5:].isdigit())


def test_step_problem_names_what_is_not_finite():
    assert step_problem(3.5, 1.25) is None
    assert step_problem(3.5, None) is None  # norm not computed
    assert step_problem(float("nan"), None) == "loss is nan"
    assert step_problem(float("inf"), float("nan")) == "loss is inf"
    assert step_problem(3.5, float("-inf")) == "grad norm is -inf"


def test_json_safe_writes_non_finite_numbers_as_null():
    safe, bad = json_safe({"nelbo": float("nan"), "bits_per_token": float("inf"), "batches": 2,
                           "standard_error": None, "layout": "mdlm"})
    assert bad == ["nelbo", "bits_per_token"]
    assert json.dumps(safe, allow_nan=False) == ('{"nelbo": null, "bits_per_token": null, "batches": 2, '
                                                 '"standard_error": null, "layout": "mdlm"}')


def test_nan_gradient_applies_no_update():
    out = run_ranks(workers.nan_gradient_skips_update, 1, args=(TINY,), timeout=300)[0]
    assert math.isnan(out["bad_norm"]) and out["bad_applied"] is False
    assert out["changed_by_bad"] == []  # parameters, Adam moments and steps, LR: bit for bit
    assert math.isfinite(out["good_norm"]) and out["good_applied"] is True and out["changed_by_good"] > 0


@pytest.mark.slow
def test_divergence_stops_with_one_line_and_keeps_the_finite_checkpoints(tmp_path):
    save = tmp_path / "ckpt"
    proc = pretrain(DIVERGE + ["--save", str(save)], check=False)
    assert proc.returncode == EXIT_NONFINITE == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = _errors(proc)
    match = re.fullmatch(rf"error: iteration (\d+): {PROBLEM}; training stopped without saving it and the last "
                         rf"checkpoint \((.+)\) is kept: {re.escape(FIX)}", line)
    assert match, line
    bad = int(match.group(1))
    assert bad >= 2 and match.group(2) == os.path.join(str(save), f"iter_{bad - 1:07d}")
    assert open(save / "latest_checkpointed_iteration.txt").read().strip() == str(bad - 1)
    assert _iterations_on_disk(save) == list(range(1, bad))  # every finite one kept, the bad one not written
    assert all(_meta(save, i)["finite"] is True for i in range(1, bad))
    logged = metrics(str(save / "metrics.jsonl"))
    assert [r["iteration"] for r in logged] == list(range(1, bad + 1))  # the bad iteration is logged too


@pytest.mark.slow
def test_skip_nonfinite_iters_skips_the_update_then_stops(tmp_path):
    save = tmp_path / "ckpt"
    proc = pretrain(DIVERGE + ["--save", str(save), "--skip-nonfinite-iters", "2"], check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    skipped = re.findall(rf"iteration (\d+): {PROBLEM}: update skipped \((\d) of 2 allowed by "
                         r"--skip-nonfinite-iters\)", proc.stdout)
    assert [int(k) for _, k in skipped] == [1, 2], proc.stdout[-3000:]
    first, second = (int(i) for i, _ in skipped)
    (line,) = _errors(proc)
    match = re.fullmatch(rf"error: iteration (\d+): {PROBLEM} after skipping 2 bad iterations; training "
                         rf"stopped without saving it and the last checkpoint \(.+\) is kept: {re.escape(FIX)}", line)
    assert match and int(match.group(1)) > second, line
    stop = int(match.group(1))
    # skipped iterations are saved (their weights are the previous ones), the stopping one is not
    assert _iterations_on_disk(save) == list(range(1, stop))
    assert all(_meta(save, i)["finite"] is True for i in range(1, stop))
    logged = {r["iteration"]: r for r in metrics(str(save / "metrics.jsonl"))}
    assert logged[first]["lr"] == logged[first - 1]["lr"]  # the LR schedule did not advance either
    same = run_ranks(workers.checkpoint_weights, 1, args=(TINY, str(save), [first - 1, first]), timeout=300)[0]
    assert same == [[]]  # the skipped update changed no weight


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A finite checkpoint from a normal run and a copy with one NaN weight."""
    out = tmp_path_factory.mktemp("nan_tools")
    pretrain(["--config", TINY, "--mock-data", "--save", str(out / "good"), "--exit-interval", "1"])
    name = run_ranks(workers.save_with_nan_weight, 1, args=(TINY, str(out / "good"), str(out / "nan")),
                     timeout=300)[0]
    assert "word_embeddings" in name
    return out


def _tool(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", script), *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)


def _strict_json(text):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_evaluate_refuses_nan_weights_and_prints_strict_json_otherwise(checkpoints):
    nan = checkpoints / "nan"
    proc = _tool("evaluate.py", "--load", str(nan), "--config", TINY, "--mock-data")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _errors(proc) == [f"error: --load {nan}: the checkpoint's weights hold NaN / Inf values: "
                             "evaluate a checkpoint from before the run diverged"]
    assert "nelbo" not in proc.stdout
    proc = _tool("evaluate.py", "--load", str(checkpoints / "good"), "--config", TINY, "--mock-data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _strict_json(proc.stdout.strip().splitlines()[-1])
    assert math.isfinite(result["nelbo"]) and result["nelbo"] > 0


@pytest.mark.slow
def test_export_hf_refuses_nan_weights(checkpoints, tmp_path):
    e = env()
    e["HF_HOME"] = str(tmp_path / "hf_home")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_hf.py"), "--load",
                           str(checkpoints / "nan"), "--save", str(tmp_path / "hf"), "--quiet"], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _errors(proc) == ["error: embedding.word_embeddings.weight holds NaN / Inf values: the checkpoint's "
                             "weights are not finite; export a checkpoint from before the run diverged"]
    assert [p.name for p in tmp_path.iterdir() if p.name != "hf_home"] == []  # no export, no temporary dir
