"""Interrupted runs resume bit-exact: kill -9 at random moments of saving, SIGTERM under TP 2 and PP 2.

Each compares every logged training loss and gradient norm with an uninterrupted run of the same
layout, exactly (same noise, same data order, same optimizer state after a resume).
"""

import os
import random
import signal
import subprocess
import time

import pytest

from megatron_dllm.checkpoint.layout import TRACKER, iterations, latest_iteration
from tests.e2e.cli import ROOT, TINY, command, env, metrics, pretrain

pytestmark = pytest.mark.slow
ITERS = 8
FLAGS = ["--config", TINY, "--mock-data", "--train-iters", str(ITERS), "--eval-interval", "0",
         "--log-interval", "1"]


def _wait_for(predicate, timeout, proc, poll=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def _assert_matches(records, reference):
    ref = {r["iteration"]: r for r in reference}
    assert {r["iteration"] for r in records} == set(ref), sorted(r["iteration"] for r in records)
    for r in records:  # every record, also those logged again after a resume
        assert r["loss"] == ref[r["iteration"]]["loss"], (r["iteration"], r["loss"], ref[r["iteration"]]["loss"])
        assert r["grad_norm"] == ref[r["iteration"]]["grad_norm"], r["iteration"]


def test_kill_9_during_saves_always_resumes_from_the_last_complete_checkpoint(tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    pretrain(FLAGS + ["--metrics-path", str(tmp_path / "ref.jsonl")])
    save = tmp_path / "ckpt"
    args = FLAGS + ["--save", str(save), "--save-interval", "1", "--ckpt-keep-last", "2"]
    kills = []
    for attempt in range(3):
        load = ["--load", str(save)] if attempt else []
        with open(tmp_path / f"out{attempt}.txt", "w") as out:
            proc = subprocess.Popen(command(args + load), cwd=ROOT, env=env(), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            saving = _wait_for(lambda: any(n.endswith(".tmp") and n.startswith("iter_")
                                           for n in (os.listdir(save) if save.exists() else [])), 300, proc)
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside (or just after) that save
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        text = open(tmp_path / f"out{attempt}.txt").read()
        assert saving, f"seed {seed}: no save seen\n{text[-3000:]}"
        kills.append(latest_iteration(str(save)))  # the tracker names a complete checkpoint (or none yet)
    final = pretrain(args + ["--load", str(save)])
    last = kills[-1]
    expected = f"starting at iteration {last}" if last is not None else "holds no checkpoint: starting from scratch"
    assert expected in final.stdout, (seed, kills, final.stdout[-2000:])
    _assert_matches(metrics(str(save / "metrics.jsonl")), metrics(str(tmp_path / "ref.jsonl")))
    assert latest_iteration(str(save)) == ITERS
    assert not [n for n in os.listdir(save) if n.endswith(".tmp")]
    assert ITERS in iterations(str(save)) and len(iterations(str(save))) <= 3, (seed, os.listdir(save))


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("layout", [["--tensor-model-parallel-size", "2", "--sequence-parallel"],
                                    ["--pipeline-model-parallel-size", "2"]], ids=["tp2", "pp2"])
def test_sigterm_under_model_parallelism_resumes_bit_exact(tmp_path, layout):
    pretrain(FLAGS + layout + ["--metrics-path", str(tmp_path / "ref.jsonl")], nproc=2)
    save = tmp_path / "ckpt"
    args = FLAGS + layout + ["--save", str(save), "--exit-signal-handler"]
    log = save / "metrics.jsonl"
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(command(args, nproc=2), cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)
        started = _wait_for(lambda: log.exists() and len(metrics(str(log))) >= 2, 300, proc, poll=0.05)
        workers = _children(proc.pid)
        if started and workers:
            os.kill(workers[-1], signal.SIGTERM)  # one rank is told (as a preempted node would be)
        proc.wait(timeout=300)
    text = open(tmp_path / "out.txt").read()
    assert started and workers and proc.returncode == 0, text[-3000:]
    saved = int(open(save / TRACKER).read())
    assert 2 <= saved < ITERS, text[-3000:]
    resumed = pretrain(args + ["--load", str(save)], nproc=2)
    assert f"starting at iteration {saved}" in resumed.stdout
    _assert_matches(metrics(str(log)), metrics(str(tmp_path / "ref.jsonl")))
