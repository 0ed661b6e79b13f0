"""A resume continues where the run was (issue 13, item 5): the curriculum position is the number of
consumed tokens stored in the checkpoint (not samples x the current --seq-length), and --exit-interval
counts iterations as Megatron-LM does (exit when iteration % N == 0), not steps of this run.

The tiny MoE schedule is 'warmup:1->4->16->32@2048; ...': 2048 tokens per warm-up stage, so after 4
iterations of 8 x 64 tokens the run is at 2048 tokens, at the start of block size 4.
"""

import shutil

import pytest

from tests.e2e.cli import TINY, metrics, pretrain

BASE = ["--config", TINY, "--mock-data"]


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """A checkpoint at iteration 4 (--exit-interval 4)."""
    ckpt = tmp_path_factory.mktemp("four") / "ckpt"
    pretrain(BASE + ["--save", str(ckpt), "--exit-interval", "4"])
    return ckpt


def _meta(ckpt, iteration):
    from megatron_dllm.checkpoint import state as checkpointing

    return checkpointing.read_meta(str(ckpt), iteration)


@pytest.mark.slow
def test_resume_with_another_seq_length_keeps_the_token_position(four, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(four, ckpt)
    meta = _meta(ckpt, 4)
    assert (meta["consumed_samples"], meta["consumed_tokens"]) == (32, 2048)
    pretrain(BASE + ["--load", str(ckpt), "--save", str(ckpt), "--seq-length", "32", "--exit-interval", "6"])
    got = metrics(str(ckpt / "metrics.jsonl"))[4:]
    assert [r["iteration"] for r in got] == [5, 6]
    assert [r["consumed_tokens"] for r in got] == [2048 + 8 * 32, 2048 + 16 * 32]
    # 32 samples x 32 tokens = 1024 would put the run back in the block-size-1 stage
    assert [(r["phase"], r["block_size"]) for r in got] == [("warmup", 4), ("warmup", 4)]
    meta = _meta(ckpt, 6)
    assert (meta["consumed_samples"], meta["consumed_tokens"]) == (48, 2560)


@pytest.mark.slow
def test_exit_interval_counts_iterations_not_steps_of_this_run(four, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(four, ckpt)
    proc = pretrain(BASE + ["--load", str(ckpt), "--save", str(ckpt), "--exit-interval", "3"])
    assert "starting at iteration 4" in proc.stdout
    assert "exit interval reached at iteration 6" in proc.stdout  # 6 % 3 == 0; not 4 + 3 = 7
    assert open(ckpt / "latest_checkpointed_iteration.txt").read().strip() == "6"
    assert [r["iteration"] for r in metrics(str(ckpt / "metrics.jsonl"))] == list(range(1, 7))
