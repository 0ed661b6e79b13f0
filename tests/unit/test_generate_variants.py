"""Decoder choice and input checks from a checkpoint's metadata; task scoring counts (tokens per
forward, model calls per problem) on an oracle model of the addition task."""

import pytest
import torch

from megatron_dllm.config import ConfigError
from megatron_dllm.data.addition import AdditionTask
from megatron_dllm.generate.task_eval import addition_accuracy
from megatron_dllm.generate.variants import check_prompt, decode_configs, decoding_variant, resolve_decoder
from tests.unit.decoding_toy import one_thread  # noqa: F401 (autouse fixture)

CHARS = "0123456789+="
EOD, MASK, VOCAB = 12, 13, 14


def test_variant_defaults_for_older_checkpoints():
    assert decoding_variant({}) == {"token_shift": False, "clean_stream": "block_causal"}
    assert decoding_variant({"token_shift": True, "clean_stream": "causal"}) == {
        "token_shift": True, "clean_stream": "causal"}
    with pytest.raises(ConfigError, match="clean_stream 'sideways'"):
        decoding_variant({"clean_stream": "sideways"})
    cfgs = decode_configs({"token_shift": True}, [0.9, 0.5], mask_id=MASK, gen_length=4, block_length=8, steps=8)
    assert [(c.threshold, c.token_shift, c.clean_stream, c.effective_steps) for c in cfgs] == [
        (0.9, True, "block_causal", 4), (0.5, True, "block_causal", 4)]


def test_decoder_choice():
    assert resolve_decoder({"objective": "ar"}) == "ar"
    assert resolve_decoder({"objective": "bd"}) == "diffusion"
    assert resolve_decoder({"objective": "bd", "clean_stream": "causal"}, "ar") == "ar"
    assert resolve_decoder({"objective": "ar"}, "diffusion") == "diffusion"
    with pytest.raises(ConfigError, match="--decoder ar: this checkpoint was trained with objective 'bd' and a "
                                          "block-causal clean stream"):
        resolve_decoder({"objective": "bd"}, "ar")


def test_prompt_checks_name_the_fix():
    check_prompt([0, 5, 255], 61, 256, 64)
    with pytest.raises(ValueError, match=r"^prompt: token id 256 is outside the model's vocabulary \[0, 256\)"):
        check_prompt([1, 256], 4, 256, 64)
    with pytest.raises(ValueError, match=r"^prompt 'ab': 2 prompt tokens \+ --gen-length 63 = 65 exceeds the "
                                         r"model's 64 positions"):
        check_prompt([1, 2], 63, 256, 64, label="ab")
    with pytest.raises(ValueError, match="token id -1"):
        check_prompt([-1], 1, 256, 64)


class CharTokenizer:
    eod_id = EOD

    def encode(self, text):
        return [CHARS.index(c) for c in text]

    def decode(self, ids):
        return "".join(CHARS[i] for i in ids if i < len(CHARS))


def oracle(task, shift):
    """Knows the sums: the row at position p predicts the answer token at p (or p + 1 with ``shift``,
    as an AR model). It reads the problem from the first call, which always starts at position 0."""
    state = {}

    def forward(tokens, positions, mask):
        if int(positions[0, 0]) == 0:
            text = CharTokenizer().decode(tokens[0, :2 * task.max_digits + 2].tolist())
            a, b = int(text[:task.max_digits]), int(text[task.max_digits + 1:2 * task.max_digits + 1])
            state["doc"] = CharTokenizer().encode(task.document(a, b)) + [EOD] * 16
        logits = torch.full((1, tokens.shape[1], VOCAB), -20.0)
        target = torch.tensor(state["doc"])[positions[0] + (1 if shift else 0)]
        logits[0, torch.arange(tokens.shape[1]), target] = 0.0
        return logits

    return forward


@pytest.mark.parametrize("fuse,calls", [(True, 2.0), (False, 3.0)])
def test_diffusion_scoring_counts_answer_tokens_and_model_calls(fuse, calls):
    task = AdditionTask(max_digits=2, num_test=10)
    (cfg,) = decode_configs({}, [0.9], mask_id=MASK, gen_length=task.answer_tokens, block_length=8, steps=8,
                            eos_id=EOD, fuse_commit=fuse)
    result = addition_accuracy(torch.nn.Identity(), oracle(task, False), CharTokenizer(), task, decode_cfg=cfg)
    record = result.as_dict()
    # "47+08=" fills slots 6-7 of block 0 in one forward and 8-9 (a digit, EOD) of block 1 in another
    assert record["accuracy"] == 1.0 and record["tokens_per_forward"] == 2.0
    assert record["model_calls_per_problem"] == calls
    assert result.decode_seconds > 0


def test_ar_scoring_is_one_token_per_forward():
    task = AdditionTask(max_digits=2, num_test=10)
    record = addition_accuracy(torch.nn.Identity(), oracle(task, True), CharTokenizer(), task, decoder="ar",
                               max_new_tokens=task.answer_tokens).as_dict()
    assert record["accuracy"] == 1.0 and record["tokens_per_forward"] == 1.0
    assert record["model_calls_per_problem"] == 4.0       # 3 digits, then EOD
