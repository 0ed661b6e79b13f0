"""SFT (``--sft`` = ``--dllm-objective sft``) on the tiny MoE, mock conversations, CAP term on:
TP2, PP2, EP2 and DP2 with the distributed optimizer give the one-rank loss and gradient norm of
both iterations (within 1e-5, as tests/e2e/test_pretrain.py), and a run stopped after 2 iterations
and resumed gives the 4 straight iterations bit for bit."""

import math

import pytest

from tests.e2e.cli import metrics, pretrain

pytestmark = pytest.mark.slow
BASE = ["--preset", "tiny-moe", "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--train-iters", "4", "--lr", "3e-3", "--lr-warmup-iters", "1", "--lr-decay-style", "cosine",
        "--device", "cpu", "--mock-data", "--sft", "--dllm-sft-block-size", "16", "--dllm-cap-weight", "1.0",
        "--log-interval", "1", "--seed", "1234"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_straight")
    pretrain(BASE + ["--metrics-path", str(out / "m.jsonl")])
    return metrics(str(out / "m.jsonl"))


def test_reference_trains(straight):
    assert [r["iteration"] for r in straight] == [1, 2, 3, 4]
    assert all(r["phase"] == "sft" and r["block_size"] == 16 and r["layout"] == "bd" for r in straight)
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in straight)


@pytest.mark.parametrize("name,layout,nproc", [
    ("tp2", ["--tensor-model-parallel-size", "2", "--sequence-parallel"], 2),
    ("pp2", ["--pipeline-model-parallel-size", "2"], 2),
    ("ep2", ["--expert-model-parallel-size", "2"], 2),
    ("dp2_distopt", ["--use-distributed-optimizer"], 2),
])
def test_layout_matches_one_rank(straight, tmp_path, name, layout, nproc):
    pretrain(BASE + layout + ["--exit-interval", "2", "--metrics-path", str(tmp_path / "m.jsonl")], nproc=nproc)
    got = metrics(str(tmp_path / "m.jsonl"))
    assert [r["iteration"] for r in got] == [1, 2]
    for g, ref in zip(got, straight[:2]):
        for key in ("loss", "grad_norm"):
            assert abs(g[key] - ref[key]) <= 1e-5 * abs(ref[key]), (name, g["iteration"], key, g[key], ref[key])


def test_resume_mid_sft_is_bit_identical(straight, tmp_path):
    ckpt = tmp_path / "ckpt"
    pretrain(BASE + ["--save", str(ckpt), "--exit-interval", "2"])
    proc = pretrain(BASE + ["--load", str(ckpt), "--save", str(ckpt)])
    assert "starting at iteration 2" in proc.stdout
    resumed = metrics(str(ckpt / "metrics.jsonl"))
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    for got, ref in zip(resumed, straight):
        assert (got["loss"], got["grad_norm"], got["lr"]) == (ref["loss"], ref["grad_norm"], ref["lr"])
