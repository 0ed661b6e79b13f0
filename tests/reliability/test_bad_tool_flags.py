"""tools/generate.py, tools/evaluate.py, tools/eval_addition.py and tools/eval_preference.py with flags
that mean nothing: a
one-line error naming the fix, exit 2, no output, no process group started (issue 13, items 4/5).

Before: generate's --mask-token-id -1 / 9999 ended in an IndexError and --tensor-model-parallel-size 0
in a ZeroDivisionError; --top-k 0 / -1 and --eos-id -1 / 9999 were accepted silently; evaluate's
--eval-block-size 0 silently scored at the sequence length and -4 ended in a ValueError traceback;
eval_addition's --gen-length 0 silently used the default length and --num-test 0 named no flag.

The tools run in-process on a checkpoint folder holding only its metadata (tracker + dllm_meta.json of
the tiny-moe preset): every check here happens before any weight is read.
"""

import dataclasses
import json
import os
import sys

import pytest
import torch.distributed as dist

from megatron_dllm.checkpoint.layout import META, TRACKER
from megatron_dllm.config import ConfigError, ParallelConfig
from megatron_dllm.data.synthetic import synthetic_lines, train_sentencepiece
from megatron_dllm.generate.decoding import DecodeConfig
from megatron_dllm.generate.loading import inference_config
from megatron_dllm.model.presets import get_preset
from tests.e2e.cli import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
try:
    import eval_addition
    import eval_preference
    import evaluate
    import generate
finally:
    sys.path.pop(0)

VOCAB = 256   # the tiny-moe preset's
MASK = 3


def _meta_only_checkpoint(root, objective="mdlm"):
    """A save folder whose iteration holds only dllm_meta.json (tiny-moe, mask id MASK)."""
    model = get_preset("tiny-moe")
    assert model.vocab_size == VOCAB
    folder = root / "iter_0000001"
    folder.mkdir(parents=True)
    meta = {"run": {"model": dataclasses.asdict(model)}, "mask_token_id": MASK, "objective": objective,
            "eod_id": 1}
    (folder / META).write_text(json.dumps(meta))
    (root / TRACKER).write_text("1")
    return str(root)


def _listing(path):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)


@pytest.fixture
def ckpt(tmp_path):
    return _meta_only_checkpoint(tmp_path / "ckpt")


def _refused(capsys, tool, argv, message, folder):
    before = _listing(folder)
    assert tool.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n"
    assert captured.out == ""
    assert not dist.is_initialized()  # refused before a process group (or a model) existed
    assert _listing(folder) == before


# --- tools/generate.py -------------------------------------------------------------------------------

OUTSIDE = f"is outside the model's vocabulary [0, {VOCAB})"


@pytest.mark.parametrize("flags,message", [
    (["--mask-token-id", "-1"], f"--mask-token-id -1 {OUTSIDE}: pass the mask id the model was trained with"),
    (["--mask-token-id", "9999"],
     f"--mask-token-id 9999 {OUTSIDE}: pass the mask id the model was trained with"),
    (["--mask-token-id", str(VOCAB)],
     f"--mask-token-id {VOCAB} {OUTSIDE}: pass the mask id the model was trained with"),
    (["--eos-id", "-1"],
     f"--eos-id -1 {OUTSIDE}: pass the tokenizer's end-of-document id (or leave --eos-id out)"),
    (["--eos-id", "9999"],
     f"--eos-id 9999 {OUTSIDE}: pass the tokenizer's end-of-document id (or leave --eos-id out)"),
    (["--top-k", "0"], "--top-k 0 must be >= 1 (or left out: no top-k filter)"),
    (["--top-k", "-1"], "--top-k -1 must be >= 1 (or left out: no top-k filter)"),
    (["--tensor-model-parallel-size", "0"], "--tensor-model-parallel-size must be >= 1"),
    (["--tensor-model-parallel-size", "-2"], "--tensor-model-parallel-size must be >= 1"),
    (["--tensor-model-parallel-size", "3"],
     "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3: choose a TP size that "
     "divides the head count"),
    (["--block-length", "0"], "--block-length 0 must be >= 1"),
    (["--gen-length", "0"], "--gen-length 0 must be >= 1"),
    (["--threshold", "0.5", "1.5"], "--threshold must be in [0, 1]"),
])
def test_generate_refuses(capsys, ckpt, flags, message):
    argv = ["--load", ckpt, "--prompt-ids", "5 9 5", "--gen-length", "8", "--block-length", "4",
            "--device", "cpu", *flags]
    _refused(capsys, generate, argv, message, ckpt)


def test_generate_refuses_a_prompt_past_the_positions(capsys, ckpt):
    """A check that already existed, now run before the process group and the model."""
    _refused(capsys, generate, ["--load", ckpt, "--prompt-ids", "1 2 3", "--gen-length", "62",
                                "--block-length", "2", "--device", "cpu"],
             "prompt '1 2 3': 3 prompt tokens + --gen-length 62 = 65 exceeds the model's 64 positions "
             "(max_position_embeddings); shorten the prompt or lower --gen-length", ckpt)


def test_the_vocabulary_bounds_are_exact():
    """The last id of the vocabulary is a valid mask / EOS id; one past it is not; top-k 1 is valid."""
    DecodeConfig(mask_id=VOCAB - 1, eos_id=0, top_k=1).validate(VOCAB)
    DecodeConfig(mask_id=0, eos_id=VOCAB - 1).validate(VOCAB)
    DecodeConfig(mask_id=9999, eos_id=-5).validate()  # no vocabulary given: ids are not checked
    with pytest.raises(ValueError, match=r"^--eos-id 256 is outside"):
        DecodeConfig(mask_id=0, eos_id=VOCAB).validate(VOCAB)


def test_inference_config_checks_the_world_size(ckpt):
    """TP 2 on one process: refused by the package before Megatron-Core's groups are built."""
    meta, model_cfg, parallel = inference_config(ckpt, ParallelConfig(tensor_model_parallel_size=2))
    assert model_cfg.vocab_size == VOCAB and meta["mask_token_id"] == MASK
    assert parallel.sequence_parallel  # MoE under TP > 1
    with pytest.raises(ConfigError) as err:
        inference_config(ckpt, ParallelConfig(tensor_model_parallel_size=2), world_size=1)
    assert str(err.value) == "world size 1 is not divisible by TP x PP x CP = 2"


# --- tools/evaluate.py -------------------------------------------------------------------------------

EVAL = ["--config", os.path.join(ROOT, "examples", "configs", "tiny_moe_cpu.yaml"), "--mock-data"]


@pytest.mark.parametrize("size", ["0", "-4", "5", "128"])
def test_evaluate_refuses_a_block_size_that_is_no_divisor(capsys, tmp_path, size):
    _refused(capsys, evaluate, EVAL + ["--load", str(tmp_path), "--eval-block-size", size],
             f"--eval-block-size {size} must be a positive divisor of --seq-length 64 "
             "(e.g. 8, 16, 32, 64; leave it out for the whole sequence)", str(tmp_path))


def test_eval_block_size_default_and_divisors():
    from megatron_dllm.train.evaluation import eval_block_size

    assert eval_block_size(None, 64) == 64
    assert eval_block_size(4, 64) == 4
    assert eval_block_size(64, 64) == 64


# --- tools/eval_addition.py --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return train_sentencepiece(synthetic_lines(100, seed=3), str(root / "tok"), vocab_size=100,
                               split_digits=True)


@pytest.mark.parametrize("flags,message", [
    (["--block-length", "0"], "--block-length 0 must be >= 1"),
    (["--block-length", "-8"], "--block-length -8 must be >= 1"),
    (["--threshold", "-0.1"], "--threshold must be in [0, 1]"),
    (["--threshold", "0.9", "1.01"], "--threshold must be in [0, 1]"),
    (["--num-test", "0"], "--num-test 0 must be in [1, 5000) for --max-digits 2"),
    (["--num-test", "-3"], "--num-test -3 must be in [1, 5000) for --max-digits 2"),
    (["--max-digits", "0"], "--max-digits 0 must be >= 1"),
    (["--gen-length", "0"], "--gen-length 0 must be >= 1"),
    (["--gen-length", "-1"], "--gen-length -1 must be >= 1"),
    (["--steps", "0"], "--steps must be in [1, block length 8], got 0"),
])
def test_eval_addition_refuses(capsys, ckpt, tokenizer, flags, message):
    argv = ["--load", ckpt, "--tokenizer-model", tokenizer, "--device", "cpu", *flags]
    _refused(capsys, eval_addition, argv, message, ckpt)


def test_eval_addition_refuses_a_zero_gen_length_for_an_ar_checkpoint(capsys, tmp_path, tokenizer):
    """Greedy decoding builds no DecodeConfig; the length is still checked (before: 0 meant the default)."""
    ar = _meta_only_checkpoint(tmp_path / "ar", objective="ar")
    _refused(capsys, eval_addition, ["--load", ar, "--tokenizer-model", tokenizer, "--gen-length", "0"],
             "--gen-length 0 must be >= 1", ar)


def test_eval_addition_refuses_a_missing_chat_template_file(capsys, ckpt, tokenizer, tmp_path):
    missing = str(tmp_path / "nope.jinja")
    _refused(capsys, eval_addition, ["--load", ckpt, "--tokenizer-model", tokenizer, "--format", "chat",
                                     "--chat-template", missing, "--device", "cpu"],
             f"--chat-template {missing}: no such file: pass auto, plain or the path of a Jinja template file", ckpt)


# --- tools/eval_preference.py ------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (["--seq-length", "0"], "--seq-length 0 must be >= 1"),
    (["--elbo-samples", "0"], "--elbo-samples 0 must be >= 1"),
    (["--batch-pairs", "-1"], "--batch-pairs -1 must be >= 1"),
    (["--variance-samples", "-2"], "--variance-samples -2 must be >= 1"),
    (["--limit", "0"], "--limit 0 must be >= 1"),
    (["--beta", "0"], "--beta 0.0 must be a finite number > 0"),
    (["--beta", "nan"], "--beta nan must be a finite number > 0"),
    (["--block-size", "5"], "--block-size 5 must be >= 1 and divide --seq-length 32"),
    (["--variance-repeats", "8"], "--variance-repeats 8 needs --ref-load and R >= 2"),
    (["--variance-repeats", "1", "--ref-load", "REF"], "--variance-repeats 1 needs --ref-load and R >= 2"),
])
def test_eval_preference_refuses(capsys, ckpt, tokenizer, tmp_path, flags, message):
    flags = [ckpt if f == "REF" else f for f in flags]
    argv = ["--load", ckpt, "--tokenizer-model", tokenizer, "--data-path", str(tmp_path / "pairs_dpo"),
            "--device", "cpu", *flags]
    _refused(capsys, eval_preference, argv, message, ckpt)


def test_eval_preference_names_the_preprocess_command_for_missing_pairs(capsys, ckpt, tokenizer, tmp_path):
    prefix = str(tmp_path / "pairs_dpo")
    _refused(capsys, eval_preference, ["--load", ckpt, "--tokenizer-model", tokenizer, "--data-path", prefix],
             f"data file {prefix}_tokens.bin does not exist: write it with tools/preprocess_data.py --format dpo "
             f"(its --output-prefix P writes P_dpo_tokens / P_dpo_lossmask; pass P_dpo)", ckpt)
