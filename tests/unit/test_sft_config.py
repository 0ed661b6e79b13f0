"""--dllm-objective sft / --sft: flags, defaults, the SFT datasets build_datasets returns, and the
LLaDA2.0-mini SFT example config (parses, validates and dry-runs)."""

import os

import pytest
import torch

from megatron_dllm.arguments import parse_args
from megatron_dllm.data.datasets import build_datasets
from megatron_dllm.data.errors import DataError
from megatron_dllm.data.sft_mock import MockSFTDataset
from megatron_dllm.objectives import dataset_options, objective_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "configs", "llada2_mini_sft.yaml")
TINY = ["--preset", "tiny-moe", "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--train-iters", "2", "--mock-data"]


def test_megatron_sft_flag_is_the_sft_objective():
    assert parse_args(TINY + ["--sft"]).diffusion.objective == "sft"
    assert parse_args(TINY + ["--dllm-objective", "sft"]).diffusion == parse_args(TINY + ["--sft"]).diffusion


def test_sft_defaults_band_block_and_complementary():
    run = parse_args(TINY + ["--sft"])
    sft = objective_for(run, mask_token_id=255, device="cpu")
    assert (sft.noise.t_low, sft.noise.t_high) == (0.3, 0.8)
    assert sft.complementary and sft.cap_weight == 0.0
    assert (sft.layout, sft.model_seq_length, sft.block_size) == ("bd", 128, 32)
    assert sft.phase_at(10 ** 9) == (sft, 32, "sft")
    assert dataset_options(run) == {"chat_format": "sft", "block_size": 32}
    assert dataset_options(parse_args(TINY + ["--dllm-objective", "mdlm"])) == {}
    given = objective_for(parse_args(TINY + ["--sft", "--dllm-t-low", "0.2", "--dllm-t-high", "0.9",
                                             "--dllm-sft-block-size", "16"]), mask_token_id=255, device="cpu")
    assert (given.noise.t_low, given.noise.t_high, given.block_size) == (0.2, 0.9, 16)


def test_mock_conversations_have_unsupervised_prompts():
    ds = MockSFTDataset(64, 254, block_size=16, seed=3, vocab_size=254, excluded_ids=(255,), num_samples=10)
    for i in range(len(ds)):
        s = ds[i]
        assert s["tokens"].shape == s["loss_mask"].shape == s["document_ids"].shape == (64,)
        assert bool((s["tokens"] < 255).all())
        docs = s["document_ids"]
        starts = [0] + [j for j in range(1, 64) if docs[j] != docs[j - 1]]
        assert all(j % 16 == 0 for j in starts)                    # conversations start on block boundaries
        for j in starts:
            assert not bool(s["loss_mask"][j])                     # each opens with its prompt
        assert bool(s["loss_mask"].any())
    assert torch.equal(ds[4]["tokens"], MockSFTDataset(64, 254, block_size=16, seed=3, vocab_size=254)[4]["tokens"])


def test_build_datasets_gives_sft_datasets():
    run = parse_args(TINY + ["--sft", "--split", "98,2,0"])
    train, valid, test = build_datasets(run.data, seq_length=64, num_samples=(8, 4, 0), seed=1, eod_id=254,
                                        mask_token_id=255, **dataset_options(run))
    assert isinstance(train, MockSFTDataset) and isinstance(valid, MockSFTDataset) and test is None
    assert len(train) == 8 and not torch.equal(train[0]["tokens"], valid[0]["tokens"])


@pytest.mark.parametrize("data_path,message", [
    (["1", "a_sft", "1", "b_sft"], "--dllm-objective sft reads one --data-path prefix, got 2: preprocess the "
                                   "JSONL files together (tools/preprocess_data.py --format sft)"),
    (["x/chat_sft_lossmask"], "--data-path x/chat_sft_lossmask names one of the two SFT files: pass the "
                              "prefix x/chat_sft (without _lossmask)"),
    (["x/chat_sft"], "data file x/chat_sft_tokens.bin does not exist: write it with tools/preprocess_data.py "
                     "--format sft (its --output-prefix P writes P_sft_tokens / P_sft_lossmask; pass P_sft)"),
])
def test_sft_data_path_errors(data_path, message):
    run = parse_args(TINY[:-1] + ["--sft", "--data-path", *data_path])
    with pytest.raises(DataError) as exc:
        build_datasets(run.data, seq_length=64, num_samples=(8, 0, 0), seed=1, eod_id=1, **dataset_options(run))
    assert str(exc.value) == message


def test_llada2_mini_sft_example_dry_runs(tmp_path, capsys, monkeypatch):
    from megatron_dllm.pretrain import main

    run = parse_args(["--config", EXAMPLE, "--mock-data"])
    d, ck = run.diffusion, run.checkpoint
    assert (d.objective, d.sft_block_size, d.t_low, d.t_high) == ("sft", 32, 0.3, 0.8)
    assert ck.finetune and (d.loss_weight, d.loss_norm) == ("none", "masked_tokens")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("RANK", raising=False)
    assert main(["--config", EXAMPLE, "--data-path", str(tmp_path / "chat_sft"), "--tokenizer-type",
                 "NullTokenizer", "--load", str(tmp_path / "cpt"), "--save", str(tmp_path / "sft"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"objective": "sft"' in out and "world_size 8," in out and "memory per GPU" in out
    assert not os.listdir(tmp_path)
