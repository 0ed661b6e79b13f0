"""DPO from the pretraining entry point (``--dllm-objective dpo --ref-load DIR``) on CPU: TP2 / EP2 /
DP2 with the distributed optimizer equal one rank (MDLM layout; TP2 also in the block-diffusion
layout), a resume mid-DPO is bit-exact, preprocessed addition pairs train with a logged margin and
accuracy, and a missing --ref-load is one line."""

import os
import subprocess
import sys

import pytest

from tests.e2e.cli import ROOT, env, metrics, pretrain

pytestmark = pytest.mark.slow
BASE = ["--preset", "tiny-moe", "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--device", "cpu", "--log-interval", "1", "--lr", "1e-3", "--seed", "1234"]
KEYS = ("loss", "grad_norm", "reward_margin", "preference_accuracy", "kl")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A trained checkpoint to start from and to use as the frozen reference (2 MDLM steps)."""
    root = tmp_path_factory.mktemp("dpo_ref")
    pretrain(BASE + ["--mock-data", "--dllm-objective", "mdlm", "--train-iters", "2", "--save", str(root / "ref")])
    return str(root / "ref")


def _dpo(reference):
    return BASE + ["--mock-data", "--dllm-objective", "dpo", "--ref-load", reference, "--load", reference,
                   "--finetune", "--dpo-elbo-samples", "2", "--train-iters", "4"]


def _assert_close(got, reference):
    """Loss and gradient norm within 1e-5 of the one-rank run; margin and kl are built from B_pi - B_ref,
    a difference of ELBOs of hundreds of nats whose fp32 rounding (ulp ~3e-5, changed by the TP / EP /
    DP reduction order) they keep, so they get 1e-4 (absolute 1e-5)."""
    for g, want in zip(got, reference):
        for key in KEYS:
            rel, tol = (1e-4, 1e-5) if key in ("reward_margin", "kl") else (1e-5, 1e-6)
            assert g[key] == pytest.approx(want[key], rel=rel, abs=tol), (g["iteration"], key)


@pytest.fixture(scope="module")
def straight(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_straight")
    pretrain(_dpo(reference) + ["--metrics-path", str(out / "m.jsonl")])
    return metrics(str(out / "m.jsonl"))


def test_dpo_trains_with_logged_margin_and_accuracy(straight):
    assert [r["iteration"] for r in straight] == [1, 2, 3, 4]
    first = straight[0]
    # the policy starts as the reference: every margin is 0, the loss log 2, no pair preferred
    assert first["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
    assert first["reward_margin"] == 0.0 and first["preference_accuracy"] == 0.0 and first["kl"] == 0.0
    assert all(r["layout"] == "dpo" and r["grad_norm"] > 0 for r in straight)
    assert any(r["reward_margin"] != 0.0 for r in straight[1:])


@pytest.mark.parametrize("layout", [
    ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    ["--expert-model-parallel-size", "2"],
    ["--use-distributed-optimizer"],
], ids=["tp2", "ep2", "dp2-distopt"])
def test_parallel_layouts_match_one_rank(reference, straight, tmp_path, layout):
    pretrain(_dpo(reference) + layout + ["--exit-interval", "2", "--metrics-path", str(tmp_path / "m.jsonl")],
             nproc=2)
    got = metrics(str(tmp_path / "m.jsonl"))
    assert [r["iteration"] for r in got] == [1, 2]
    _assert_close(got, straight[:2])


def test_block_diffusion_layout_at_tp2_matches_one_rank(reference, tmp_path):
    bd = _dpo(reference) + ["--dpo-block-size", "16", "--exit-interval", "2"]
    pretrain(bd + ["--metrics-path", str(tmp_path / "one.jsonl")])
    pretrain(bd + ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--metrics-path",
                   str(tmp_path / "tp2.jsonl")], nproc=2)
    one, tp2 = metrics(str(tmp_path / "one.jsonl")), metrics(str(tmp_path / "tp2.jsonl"))
    assert [r["iteration"] for r in one] == [r["iteration"] for r in tp2] == [1, 2]
    assert one[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6) and one[1]["reward_margin"] != 0.0
    _assert_close(tp2, one)


def test_resume_mid_dpo_is_bit_exact(reference, straight, tmp_path):
    save = str(tmp_path / "dpo")
    pretrain(_dpo(reference) + ["--save", save, "--exit-interval", "2", "--metrics-path", str(tmp_path / "a.jsonl")])
    resumed = BASE + ["--mock-data", "--dllm-objective", "dpo", "--ref-load", reference, "--load", save,
                      "--save", save, "--dpo-elbo-samples", "2", "--train-iters", "4",
                      "--metrics-path", str(tmp_path / "b.jsonl")]
    proc = pretrain(resumed)
    assert "starting at iteration 2" in proc.stdout
    got = metrics(str(tmp_path / "a.jsonl")) + metrics(str(tmp_path / "b.jsonl"))
    assert [r["iteration"] for r in got] == [1, 2, 3, 4]
    for g, want in zip(got, straight):
        assert {k: g[k] for k in KEYS} == {k: want[k] for k in KEYS}


def test_missing_ref_load_is_one_line(tmp_path):
    proc = pretrain(BASE + ["--mock-data", "--dllm-objective", "dpo", "--train-iters", "1"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --dllm-objective dpo needs --ref-load DIR: the frozen reference checkpoint (usually the SFT "
        "model the policy starts from)"]


def test_ref_load_without_a_checkpoint_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = pretrain(BASE + ["--mock-data", "--dllm-objective", "dpo", "--ref-load", str(empty), "--train-iters", "1"],
                    check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --ref-load {empty}: no checkpoint found: pass the directory of the reference checkpoint (e.g. "
        f"the SFT model's --save)"]


def test_dpo_on_preprocessed_addition_pairs(reference, tmp_path):
    from megatron_dllm.data.addition import AdditionTask
    from megatron_dllm.data.addition_chat import chat_question, dpo_records, write_jsonl_records
    from megatron_dllm.data.synthetic import train_sentencepiece

    task = AdditionTask(max_digits=2, num_test=20, seed=0)
    records = dpo_records(task, 48, seed=2)
    texts = [f"user: {chat_question(task, a, b)}\nassistant: {a + b:03d}" for a in range(0, 100, 7)
             for b in range(0, 100, 9)]
    model = train_sentencepiece(texts, str(tmp_path / "tok"), vocab_size=40, split_digits=True)
    write_jsonl_records(str(tmp_path / "pairs.jsonl"), records)
    subprocess.run([sys.executable, os.path.join("tools", "preprocess_data.py"), "--format", "dpo",
                    "--input", str(tmp_path / "pairs.jsonl"), "--tokenizer-model", model,
                    "--output-prefix", str(tmp_path / "addition")], cwd=ROOT, env=env(), check=True,
                   capture_output=True)
    proc = pretrain(BASE + ["--dllm-objective", "dpo", "--ref-load", reference, "--train-iters", "3",
                            "--data-path", str(tmp_path / "addition_dpo"), "--tokenizer-model", model,
                            "--split", "1,0,0", "--metrics-path", str(tmp_path / "m.jsonl")])
    got = metrics(str(tmp_path / "m.jsonl"))
    assert [r["iteration"] for r in got] == [1, 2, 3]
    for r in got:
        for key in KEYS:
            assert r[key] is not None and abs(r[key]) < float("inf"), key
        assert 0.0 <= r["preference_accuracy"] <= 1.0
    assert "reward margin:" in proc.stdout and "preference acc:" in proc.stdout
