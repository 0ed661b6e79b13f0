"""End-to-end pretraining runs of examples/configs/tiny_moe_cpu.yaml on CPU (mock data).

One straight 60-step run is the reference for: the loss falling, the curriculum in the logs, the
first-step loss of TP=2 / PP=2 / EP=2 runs, and a stop-and-resume that must reproduce it bit for bit.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from megatron_dllm.diffusion.curriculum import BlockSchedule
from tests.e2e.cli import ROOT, TINY, command, env, metrics, pretrain

pytestmark = pytest.mark.slow
BASE = ["--config", TINY, "--mock-data"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    proc = pretrain(BASE + ["--tensorboard-dir", str(out / "tb"), "--metrics-path", str(out / "metrics.jsonl")])
    return out, proc, metrics(str(out / "metrics.jsonl"))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """16 steps (the last step of the warm-up: the next step switches to the stable phase), saved."""
    out = tmp_path_factory.mktemp("stopped")
    pretrain(BASE + ["--save", str(out / "ckpt"), "--exit-interval", "16"])
    shutil.copytree(out / "ckpt", out / "ckpt_copy")
    return out


def test_loss_falls_and_curriculum_is_followed(straight):
    _, proc, train = straight
    assert [r["iteration"] for r in train] == list(range(1, 61))
    sizes = [r["block_size"] for r in train]
    assert sizes == [1] * 4 + [4] * 4 + [16] * 4 + [32] * 4 + [64] * 24 + [32] * 8 + [16] * 8 + [8] * 4
    schedule = BlockSchedule.parse("warmup:1->4->16->32@2048; stable:L@12288; decay:32->16->8@4096", 64)
    for r in train:
        tokens_before = (r["iteration"] - 1) * 512
        assert r["phase"] == schedule.phase_at(tokens_before)
        assert r["consumed_tokens"] == r["iteration"] * 512
        assert r["layout"] == ("mdlm" if r["block_size"] == 64 else "bd")
    losses = [r["loss"] for r in train]
    stable = [r["loss"] for r in train if r["phase"] == "stable"]
    assert sum(stable[-5:]) / 5 < sum(stable[:5]) / 5 - 0.3, stable
    assert sum(losses[-10:]) / 10 < sum(losses[:4]) / 4 - 0.3, losses
    valid = metrics(str(straight[0] / "metrics.jsonl"), kind="valid")
    assert valid[1]["nelbo"] < valid[0]["nelbo"]  # both in the stable (MDLM) layout, same samples and noise
    assert "iteration       60/      60" in proc.stdout


def test_metrics_and_tensorboard_tags(straight):
    out, _, train = straight
    for key in ("iteration", "consumed_tokens", "phase", "block_size", "lr", "loss", "grad_norm"):
        assert all(key in r for r in train), key
    valid = metrics(str(out / "metrics.jsonl"), kind="valid")
    assert [r["iteration"] for r in valid] == [20, 40, 60]
    assert all(r["nelbo"] > 0 for r in valid)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/masked_acc", "train/block_size",
                "train/loss_warmup", "train/loss_stable", "train/loss_decay", "valid/nelbo",
                "valid/bits_per_token"} | {f"train/loss_t{k}" for k in range(5)}
    assert expected <= tags, expected - tags
    blocks = [e.value for e in acc.Scalars("train/block_size")]
    assert blocks == [float(r["block_size"]) for r in train]


def test_resume_is_bit_identical_across_a_curriculum_switch(straight, stopped, tmp_path):
    _, _, reference = straight
    ckpt = stopped / "ckpt"
    first = metrics(str(ckpt / "metrics.jsonl"))
    assert [r["iteration"] for r in first] == list(range(1, 17))
    assert open(ckpt / "latest_checkpointed_iteration.txt").read().strip() == "16"
    proc = pretrain(BASE + ["--load", str(ckpt), "--save", str(ckpt)])
    assert "starting at iteration 16" in proc.stdout
    resumed = metrics(str(ckpt / "metrics.jsonl"))
    assert [r["iteration"] for r in resumed] == list(range(1, 61))
    for got, ref in zip(resumed, reference):
        assert got["loss"] == ref["loss"], (got["iteration"], got["loss"], ref["loss"])
        assert got["grad_norm"] == ref["grad_norm"]
        assert got["block_size"] == ref["block_size"]
    valid = metrics(str(ckpt / "metrics.jsonl"), kind="valid")
    ref_valid = metrics(str(straight[0] / "metrics.jsonl"), kind="valid")
    assert [v["nelbo"] for v in valid] == [v["nelbo"] for v in ref_valid]


def test_resume_under_a_different_tensor_parallel_size(straight, stopped, tmp_path):
    _, _, reference = straight
    proc = pretrain(BASE + ["--load", str(stopped / "ckpt_copy"), "--save", str(tmp_path / "tp2"),
                            "--tensor-model-parallel-size", "2", "--sequence-parallel",
                            "--exit-interval", "2"], nproc=2)
    assert "starting at iteration 16" in proc.stdout
    got = metrics(str(tmp_path / "tp2" / "metrics.jsonl"))
    assert [r["iteration"] for r in got] == [17, 18]
    for g, ref in zip(got, reference[16:18]):
        assert abs(g["loss"] - ref["loss"]) <= 1e-4 * abs(ref["loss"])


@pytest.mark.parametrize("layout,nproc", [
    (["--tensor-model-parallel-size", "2", "--sequence-parallel"], 2),
    (["--pipeline-model-parallel-size", "2"], 2),
    (["--expert-model-parallel-size", "2"], 2),
    (["--dllm-bd-micro-batch-size", "2"], 1),   # 4 micro-batches of 2 instead of 2 of 4
])
def test_first_iteration_loss_matches_one_rank(straight, tmp_path, layout, nproc):
    _, _, reference = straight
    pretrain(BASE + layout + ["--exit-interval", "1", "--metrics-path", str(tmp_path / "m.jsonl")], nproc=nproc)
    first = metrics(str(tmp_path / "m.jsonl"))[0]
    assert abs(first["loss"] - reference[0]["loss"]) <= 1e-5 * abs(reference[0]["loss"])
    assert abs(first["grad_norm"] - reference[0]["grad_norm"]) <= 1e-5 * abs(reference[0]["grad_norm"])


def test_virtual_pipeline_stages_match_one_rank(tmp_path):
    """PP 2 x 2 virtual stages (the interleaved schedule) against one rank, 4 layers, two steps."""
    four = BASE + ["--num-layers", "4", "--exit-interval", "2"]
    pretrain(four + ["--metrics-path", str(tmp_path / "one.jsonl")])
    pretrain(four + ["--pipeline-model-parallel-size", "2", "--virtual-pipeline-model-parallel-size", "2",
                     "--metrics-path", str(tmp_path / "vpp.jsonl")], nproc=2)
    one, vpp = metrics(str(tmp_path / "one.jsonl")), metrics(str(tmp_path / "vpp.jsonl"))
    assert len(one) == len(vpp) == 2
    for a, b in zip(one, vpp):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * abs(a["grad_norm"])


def test_distributed_optimizer_checkpoint_reshards_over_data_parallel(straight, tmp_path):
    _, _, reference = straight
    save = tmp_path / "dopt"
    pretrain(BASE + ["--use-distributed-optimizer", "--save", str(save),
                     "--exit-interval", "3"], nproc=2)            # DP = 2: optimizer state sharded in two
    proc = pretrain(BASE + ["--use-distributed-optimizer", "--load", str(save), "--save", str(save),
                            "--exit-interval", "5"])              # DP = 1; exits at iteration 5
    assert "optimizer restored" in proc.stdout and "starting at iteration 3" in proc.stdout
    got = metrics(str(save / "metrics.jsonl"))
    assert [r["iteration"] for r in got] == [1, 2, 3, 4, 5]
    for g, ref in zip(got, reference[:5]):
        assert abs(g["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"]), (g["iteration"], g["loss"], ref["loss"])
    # experts under EP form a second optimizer part: a resume without EP says what to do
    ep = tmp_path / "ep"
    pretrain(BASE + ["--expert-model-parallel-size", "2", "--save", str(ep), "--exit-interval", "1"], nproc=2)
    proc = pretrain(BASE + ["--load", str(ep), "--exit-interval", "1"], check=False)
    assert proc.returncode == 2 and "--no-load-optim" in proc.stderr
    proc = pretrain(BASE + ["--load", str(ep), "--no-load-optim", "--exit-interval", "1"])
    assert "optimizer fresh" in proc.stdout


def _wait_for(predicate, timeout, proc):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    save = tmp_path / "ckpt"
    log = save / "metrics.jsonl"
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(command(BASE + ["--save", str(save), "--exit-signal-handler"]), cwd=ROOT,
                                env=env(), stdout=out, stderr=subprocess.STDOUT)
        started = _wait_for(lambda: log.exists() and len(metrics(str(log))) >= 3, 300, proc)
        if started:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    text = open(tmp_path / "out.txt").read()
    assert started and proc.returncode == 0, text[-3000:]
    assert "SIGTERM received" in text
    saved = int(open(save / "latest_checkpointed_iteration.txt").read())
    assert 3 <= saved < 60
    resumed = pretrain(BASE + ["--load", str(save), "--save", str(save), "--exit-interval", "1"])
    assert f"starting at iteration {saved}" in resumed.stdout


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    save = tmp_path / "ckpt"
    with open(tmp_path / "out.txt", "w") as out:
        # its own session, so the kill reaches the checkpoint writer processes too (like a node loss)
        proc = subprocess.Popen(command(BASE + ["--save", str(save), "--save-interval", "4"]), cwd=ROOT,
                                env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        in_save = _wait_for(lambda: (save / "iter_0000008.tmp").exists(), 300, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 while iteration 8 is being written
        proc.wait(timeout=60)
    assert in_save, open(tmp_path / "out.txt").read()[-3000:]
    assert open(save / "latest_checkpointed_iteration.txt").read().strip() == "4"
    assert not (save / "iter_0000008").exists()
    resumed = pretrain(BASE + ["--load", str(save), "--save", str(save), "--exit-interval", "1"])
    assert "starting at iteration 4" in resumed.stdout
    assert open(save / "latest_checkpointed_iteration.txt").read().strip() == "5"


def test_ar_objective_trains_the_causal_baseline(tmp_path):
    save = tmp_path / "ar"
    pretrain(["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--dllm-objective", "ar",
              "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "12",
              "--lr", "3e-3", "--log-interval", "1", "--save", str(save)])
    train = metrics(str(save / "metrics.jsonl"))
    assert all(r["phase"] == "ar" and r["layout"] == "ar" for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    meta = json.load(open(save / "iter_0000012" / "dllm_meta.json"))
    assert meta["objective"] == "ar" and meta["has_optimizer"]
