"""Validation leaves training alone (issue 13, item 6).

Before the fix, evaluation ran with gradients enabled, so Megatron-Core's routers added the validation
tokens to ``local_tokens_per_expert``, the counts of the next expert-bias update: the tiny MoE run with
evaluation every 10 iterations trained differently from iteration 23 on. Now a run with evaluation, a
run without, and a run stopped at an evaluation point and resumed across the next one train the same,
bit for bit.
"""

import pytest

from tests.distributed.harness import run_ranks
from tests.e2e.cli import TINY, metrics, pretrain
from tests.reliability import training_workers as workers

ITERS = ["--train-iters", "24"]
BASE = ["--config", TINY, "--mock-data"] + ITERS


def test_evaluation_changes_no_training_state():
    """Parameters, buffers (router token counts, expert bias), optimizer state, RNG states, module
    modes and the embedding-noise hook are bit-identical before and after an evaluation."""
    out = run_ranks(workers.eval_leaves_state, 1, args=(TINY, 2), timeout=300)[0]
    assert out["router_buffers"] > 0 and out["hook"] is True  # the state at risk exists
    assert out["nelbo"] > 0
    assert out["changed"] == []


@pytest.fixture(scope="module")
def no_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("no_eval")
    pretrain(BASE + ["--eval-interval", "1000", "--metrics-path", str(out / "m.jsonl")])
    return metrics(str(out / "m.jsonl"))


def _assert_same_training(got, reference):
    assert [r["iteration"] for r in got] == [r["iteration"] for r in reference] == list(range(1, 25))
    for g, r in zip(got, reference):
        assert (g["loss"], g["grad_norm"]) == (r["loss"], r["grad_norm"]), g["iteration"]


@pytest.mark.slow
def test_training_with_evaluation_matches_training_without(no_eval, tmp_path):
    pretrain(BASE + ["--eval-interval", "10", "--metrics-path", str(tmp_path / "m.jsonl")])
    _assert_same_training(metrics(str(tmp_path / "m.jsonl")), no_eval)
    assert [v["iteration"] for v in metrics(str(tmp_path / "m.jsonl"), kind="valid")] == [10, 20]


@pytest.mark.slow
def test_stop_at_an_evaluation_and_resume_across_the_next(no_eval, tmp_path):
    save = tmp_path / "ckpt"
    pretrain(BASE + ["--eval-interval", "10", "--save", str(save), "--exit-interval", "10"])
    assert open(save / "latest_checkpointed_iteration.txt").read().strip() == "10"
    proc = pretrain(BASE + ["--eval-interval", "10", "--load", str(save), "--save", str(save)])
    assert "starting at iteration 10" in proc.stdout
    _assert_same_training(metrics(str(save / "metrics.jsonl")), no_eval)
    assert [v["iteration"] for v in metrics(str(save / "metrics.jsonl"), kind="valid")] == [10, 20]
