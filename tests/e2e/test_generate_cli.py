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


def test_bad_input(checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, TOOL, "--load", str(checkpoint)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: give --prompt, --prompts-file or --prompt-ids" in proc.stderr
    proc = subprocess.run([sys.executable, TOOL, "--load", str(tmp_path), "--prompt-ids", "1 2"], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no checkpoint found" in proc.stderr


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
