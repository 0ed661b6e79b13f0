"""tools/generate.py and tools/evaluate.py on a checkpoint written by the pretraining CLI."""

import json
import os
import subprocess
import sys

import pytest

from megatron_dllm.platform.distributed import free_port
from tests.e2e.cli import ROOT, TINY, env, pretrain

pytestmark = pytest.mark.slow
TOOL = os.path.join(ROOT, "tools", "generate.py")
ARGS = ["--prompt-ids", "5 9 5 9 5 9", "--prompt-ids", "1 2 3 4 5 6 7 8 9 10 11", "--gen-length", "16",
        "--block-length", "8", "--threshold", "0.9", "--json", "--device", "cpu"]


def _generate(ckpt, extra=(), nproc=1):
    if nproc == 1:
        cmd = [sys.executable, TOOL]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), TOOL]
    proc = subprocess.run(cmd + ["--load", str(ckpt), *ARGS, *extra], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    save = tmp_path_factory.mktemp("gen") / "ckpt"
    pretrain(["--config", TINY, "--mock-data", "--save", str(save), "--exit-interval", "8",
              "--eval-interval", "8"])
    return save


def test_tensor_parallel_and_no_cache_match(checkpoint):
    base = _generate(checkpoint)
    assert len(base) == 2 and all(r["num_tokens"] == 16 for r in base)
    assert all(r["tokens_per_forward"] >= 1.0 for r in base)
    assert [r["tokens"] for r in _generate(checkpoint, ["--no-cache"])] == [r["tokens"] for r in base]
    tp2 = _generate(checkpoint, ["--tensor-model-parallel-size", "2"], nproc=2)
    assert [r["tokens"] for r in tp2] == [r["tokens"] for r in base]
    # finished blocks written in their own forward: same tokens, one more model call per block
    separate = _generate(checkpoint, ["--separate-commits"])
    assert [r["tokens"] for r in separate] == [r["tokens"] for r in base]
    assert [r["num_forward_passes"] for r in separate] == [r["num_forward_passes"] for r in base]
    assert all(r["model_calls"] == r["num_forward_passes"] for r in base)
    assert all(s["model_calls"] > b["model_calls"] for s, b in zip(separate, base))


def test_bad_input(checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, TOOL, "--load", str(checkpoint)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: give --prompt, --prompts-file or --prompt-ids" in proc.stderr
    proc = subprocess.run([sys.executable, TOOL, "--load", str(tmp_path), "--prompt-ids", "1 2"], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no checkpoint found" in proc.stderr


@pytest.mark.parametrize("extra,message", [
    (["--prompt-ids", "1 2 3", "--gen-length", "62"],
     "error: prompt '1 2 3': 3 prompt tokens + --gen-length 62 = 65 exceeds the model's 64 positions "
     "(max_position_embeddings); shorten the prompt or lower --gen-length"),
    (["--prompt-ids", "1 300"], "error: prompt '1 300': token id 300 is outside the model's vocabulary [0, 256)"),
    (["--prompt-ids", "1 2", "--steps", "0"], "error: --steps must be in [1, block length 32], got 0"),
])
def test_inputs_the_model_cannot_take_are_refused(checkpoint, extra, message):
    proc = subprocess.run([sys.executable, TOOL, "--load", str(checkpoint), "--device", "cpu", *extra], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def _evaluate(ckpt, *extra):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), "--load", str(ckpt),
                           "--config", TINY, "--mock-data", *extra], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_evaluate_is_the_training_validation(checkpoint):
    from tests.e2e.cli import metrics

    valid = metrics(str(checkpoint / "metrics.jsonl"), kind="valid")[-1]
    assert valid["iteration"] == 8 and valid["block_size"] == 4
    same = _evaluate(checkpoint, "--eval-iters", "1", "--eval-block-size", "4")
    assert same["nelbo"] == valid["nelbo"]
    several = _evaluate(checkpoint, "--eval-iters", "3")
    assert several["layout"] == "mdlm" and several["batches"] == 3
    assert several["standard_error"] is not None and 0 < several["standard_error"] < several["nelbo"]


def test_evaluate_reads_the_prediction_rule_from_the_checkpoint(checkpoint, tmp_path):
    from tests.e2e.cli import metrics

    shifted = tmp_path / "shifted"
    pretrain(["--config", TINY, "--mock-data", "--save", str(shifted), "--exit-interval", "8",
              "--eval-interval", "8", "--dllm-token-shift"])
    valid = metrics(str(shifted / "metrics.jsonl"), kind="valid")[-1]
    same = _evaluate(shifted, "--eval-iters", "1", "--eval-block-size", "4")  # no flag: the recorded rule
    assert same["nelbo"] == valid["nelbo"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), "--load", str(checkpoint),
                           "--config", TINY, "--mock-data", "--dllm-token-shift"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --dllm-token-shift: the checkpoint was trained without it")
