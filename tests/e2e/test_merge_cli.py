"""tools/merge_checkpoints.py: the merged checkpoint is the exact mean of its inputs and trains on."""

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.harness import run_ranks
from tests.distributed.merge_workers import mean_vs_merged_worker
from tests.e2e.cli import ROOT, TINY, env, metrics, pretrain

pytestmark = pytest.mark.slow
TOOL = os.path.join(ROOT, "tools", "merge_checkpoints.py")


def _merge(*args):
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    save = tmp_path_factory.mktemp("merge") / "ckpt"
    pretrain(["--config", TINY, "--mock-data", "--save", str(save), "--save-interval", "10",
              "--eval-interval", "10", "--ckpt-keep-last", "0", "--exit-interval", "30"])
    return save


def test_top_k_merge_is_the_exact_mean(run_dir, tmp_path):
    proc = _merge("--load", str(run_dir), "--top-k", "2", "--save", str(tmp_path / "merged"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    valid = {r["iteration"]: r["nelbo"] for r in metrics(str(run_dir / "metrics.jsonl"), kind="valid")}
    best = sorted(valid, key=valid.get)[:2]
    assert [os.path.basename(p) for p in result["inputs"]] == [f"iter_{i:07d}" for i in best]
    check = run_ranks(mean_vs_merged_worker, 1,
                      args=(result["inputs"], str(tmp_path / "merged" / "iter_0000000")))[0]
    assert check["compared"] > 10 and check["mismatched"] == []
    assert check["differs_from_inputs"]
    trained = pretrain(["--config", TINY, "--mock-data", "--load", str(tmp_path / "merged"),
                        "--exit-interval", "1"])
    assert "optimizer fresh" in trained.stdout and "starting at iteration 0" in trained.stdout


def test_bad_input(run_dir, tmp_path):
    proc = _merge("--inputs", str(run_dir / "iter_0000010"), "--save", str(tmp_path / "x"))
    assert proc.returncode == 2 and "at least two" in proc.stderr
    proc = _merge("--inputs", str(run_dir / "iter_0000010"), str(run_dir / "iter_0000020"),
                  "--save", str(run_dir))
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = _merge("--inputs", str(tmp_path), str(run_dir), "--save", str(tmp_path / "y"))
    assert proc.returncode == 2 and "not a megatron_dllm checkpoint" in proc.stderr
    assert not (tmp_path / "y").exists()
