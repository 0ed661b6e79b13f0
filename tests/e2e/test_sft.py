"""SFT end to end: addition conversations (megatron_dllm/data/addition_chat.py) preprocessed by
``tools/preprocess_data.py --format sft``, then ``python -m megatron_dllm.pretrain --dllm-objective
sft --finetune --load CPT`` from a block-diffusion checkpoint; bad combinations stop in one line."""

import os
import shutil
import subprocess
import sys

import pytest

from megatron_dllm.data.addition import AdditionTask
from megatron_dllm.data.addition_chat import sft_records, write_jsonl_records
from megatron_dllm.data.synthetic import train_sentencepiece
from tests.e2e.cli import ROOT, metrics, pretrain
from tests.e2e.test_pretrain_errors import _error_line

MODEL = ["--preset", "tiny-moe", "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
         "--device", "cpu", "--log-interval", "1", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """A sentencepiece tokenizer with <|mask|>, and the SFT prefix of 300 addition conversations."""
    root = tmp_path_factory.mktemp("sft_e2e")
    records = sft_records(AdditionTask(), 300, seed=1)
    lines = [f"user: {r['messages'][0]['content']}\nassistant: {r['messages'][1]['content']}" for r in records]
    tok = train_sentencepiece(lines, str(root / "tok"), vocab_size=60, split_digits=True)
    write_jsonl_records(str(root / "sft.jsonl"), records)
    proc = subprocess.run([sys.executable, os.path.join("tools", "preprocess_data.py"), "--format", "sft",
                           "--input", str(root / "sft.jsonl"), "--tokenizer-model", tok,
                           "--output-prefix", str(root / "addition")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prefix = str(root / "addition_sft")
    assert os.path.isfile(prefix + "_lossmask.bin")
    data = ["--tokenizer-model", tok, "--data-path", prefix, "--split", "95,5,0"]
    return {"root": root, "tok": tok, "prefix": prefix, "data": data}


@pytest.fixture(scope="module")
def cpt(chat):
    """A block-diffusion (CPT) checkpoint of the tiny MoE with this tokenizer's vocabulary."""
    ckpt = chat["root"] / "cpt"
    pretrain(MODEL + ["--tokenizer-model", chat["tok"], "--mock-data", "--dllm-objective", "bd",
                      "--dllm-block-schedule", "stable:16@inf", "--train-iters", "2", "--save", str(ckpt)])
    return ckpt


@pytest.mark.slow
def test_sft_finetunes_a_cpt_checkpoint_on_preprocessed_conversations(chat, cpt, tmp_path):
    save = tmp_path / "sft"
    proc = pretrain(MODEL + chat["data"] + ["--dllm-objective", "sft", "--load", str(cpt), "--finetune",
                                            "--save", str(save), "--train-iters", "8", "--eval-interval", "8",
                                            "--eval-iters", "1"])
    assert "starting at iteration 0" in proc.stdout and "objective sft" in proc.stdout
    train = metrics(str(save / "metrics.jsonl"))
    assert [r["iteration"] for r in train] == list(range(1, 9))
    assert all(r["phase"] == "sft" and r["block_size"] == 32 and r["layout"] == "bd" for r in train)
    losses = [r["loss"] for r in train]
    assert all(0 < x < 10 for x in losses)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    valid = metrics(str(save / "metrics.jsonl"), kind="valid")
    assert len(valid) == 1 and valid[0]["nelbo"] > 0
    assert open(save / "latest_checkpointed_iteration.txt").read().strip() == "8"


def test_sft_with_a_curriculum_is_one_line(chat):
    proc = pretrain(MODEL + chat["data"] + ["--sft", "--train-iters", "1", "--dllm-block-schedule",
                                            "warmup:1->4@1K; stable:L@inf"], check=False)
    assert _error_line(proc) == ("error: --dllm-objective sft trains at one block size: drop "
                                 "--dllm-block-schedule and give --dllm-sft-block-size (default 32)")


def test_sft_prefix_without_its_loss_mask_names_the_preprocess_command(chat, tmp_path):
    for ext in (".bin", ".idx"):  # the token ids only: the _lossmask companion is missing
        shutil.copy(chat["prefix"] + "_tokens" + ext, str(tmp_path / "chat_sft_tokens") + ext)
    proc = pretrain(MODEL + ["--tokenizer-model", chat["tok"], "--data-path", str(tmp_path / "chat_sft"),
                             "--sft", "--train-iters", "1"], check=False)
    assert _error_line(proc) == (f"error: data file {tmp_path / 'chat_sft'}_lossmask.bin does not exist: write it "
                                 f"with tools/preprocess_data.py --format sft (its --output-prefix P writes "
                                 f"P_sft_tokens / P_sft_lossmask; pass P_sft)")


def test_sft_options_belong_to_sft():
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.config import ConfigError
    from megatron_dllm.train.preflight import check_run

    for flag in (["--dllm-sft-block-size", "16"], ["--dllm-cap-weight", "2"]):
        with pytest.raises(ConfigError) as exc:
            check_run(parse_args(MODEL + ["--mock-data", "--train-iters", "1", "--dllm-objective", "mdlm", *flag]), 1)
        assert str(exc.value) == ("--dllm-sft-block-size / --dllm-cap-weight are SFT options: use them with "
                                  "--dllm-objective sft")
    with pytest.raises(ConfigError, match=r"^--seq-length 64 is not a multiple of the SFT block size 24: "):
        check_run(parse_args(MODEL + ["--mock-data", "--train-iters", "1", "--sft", "--dllm-sft-block-size", "24"]), 1)
