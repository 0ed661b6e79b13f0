"""Issue 17, parser side: Megatron-LM flags accepted with no effect or refused in one line, the
sample-based schedule, Megatron-LM's defaults and rules, --tokenizer-type, --eod-mask-loss,
--distributed-timeout-minutes, --exit-duration-in-mins and --lr-warmup-init."""

import os
import time

import pytest
import torch

from megatron_dllm.arguments import _coerce, _field_table, parse_args
from megatron_dllm.config_io import read_yaml
from megatron_dllm.config import CheckpointConfig, ConfigError, ModelConfig, TrainingConfig
from megatron_dllm.data.config import DataConfig
from megatron_dllm.megatron_flags import ACCEPTED, NOT_SUPPORTED, split_argv
from megatron_dllm.model.presets import get_preset
from megatron_dllm.train.preflight import check_run, check_tokenizer

TINY = ["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--global-batch-size", "8"]


def test_accepted_flags_are_listed_once_with_their_reason():
    rest, accepted = split_argv(["--use-mcore-models", "--lr", "1e-3", "--ckpt-format", "torch_dist",
                                 "--use-mcore-models", "--manual-gc-interval", "10", "--seq-length", "8"])
    assert rest == ["--lr", "1e-3", "--seq-length", "8"]
    assert accepted == ["--use-mcore-models (models are always Megatron-Core GPTModel)",
                        "--ckpt-format torch_dist (checkpoints are always torch_dist (dist_checkpointing))",
                        "--manual-gc-interval 10 (Python's garbage collector is left automatic)"]
    run = parse_args(TINY + ["--train-iters", "2", "--no-masked-softmax-fusion", "--dataloader-type=single"])
    assert [line.split(" (")[0] for line in run.accepted_flags] == ["--no-masked-softmax-fusion",
                                                                   "--dataloader-type single"]


@pytest.mark.parametrize("argv, message", [
    (["--multi-latent-attention"], "not supported: --multi-latent-attention (multi-latent attention"),
    (["--mtp-num-layers", "1"], "not supported: --mtp-num-layers (multi-token prediction"),
    (["--bias-zero-mean-update"], "not supported: --bias-zero-mean-update (a Ling-V2 fork flag"),
    (["--optimizer", "adamw-bnb-8bit"], "not supported: --optimizer adamw-bnb-8bit (bitsandbytes"),
    (["--ckpt-format", "torch"], "not supported: --ckpt-format torch (legacy"),
    (["--dataloader-type", "cyclic"], "not supported: --dataloader-type cyclic ("),
    (["--tokenizer-type", "BailingTokenizer"], "not supported: --tokenizer-type BailingTokenizer (Ling"),
    (["--attention-backend", "magic"], "not supported: --attention-backend magic (accepted: auto, flash"),
])
def test_not_supported_is_one_line(argv, message):
    with pytest.raises(ConfigError) as info:
        parse_args(TINY + ["--train-iters", "2"] + argv)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_tables_do_not_shadow_real_flags():
    from megatron_dllm.arguments import build_parser

    real = {s for a in build_parser()._actions for s in a.option_strings}
    assert not (set(ACCEPTED) | set(NOT_SUPPORTED)) & real


def test_yaml_may_hold_accepted_flags_and_refuses_unsupported(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("preset: tiny-moe\nuse-mcore-models: true\nckpt_format: torch_dist\ntrain-iters: 2\n")
    run = parse_args(["--config", str(good)])
    assert [line.split(" (")[0] for line in run.accepted_flags] == ["--use-mcore-models", "--ckpt-format torch_dist"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny-moe\nmulti-latent-attention: true\n")
    with pytest.raises(ConfigError, match=r"^not supported: --multi-latent-attention \("):
        parse_args(["--config", str(bad)])


def test_train_samples_become_iterations():
    run = parse_args(TINY + ["--train-samples", "1000", "--lr-warmup-samples", "20", "--lr-decay-samples", "801",
                             "--lr-decay-style", "WSD", "--lr-wsd-decay-samples", "64"])
    t = run.training
    assert (t.train_iters, t.lr_warmup_iters, t.lr_decay_iters, t.lr_wsd_decay_iters) == (125, 3, 101, 8)
    assert t.train_samples == 1000  # kept, so the checkpoint records what was asked
    check_run(run, world_size=1)
    assert parse_args(TINY + ["--train-samples", "1007"]).training.train_iters == 125  # floor, as Megatron-LM


@pytest.mark.parametrize("argv, message", [
    (["--train-samples", "80", "--train-iters", "4"], "give one of --train-iters, --train-samples or --train-tokens"),
    (["--train-samples", "4"], "--train-samples 4 is less than one step of --global-batch-size 8"),
    (["--train-iters", "4", "--lr-warmup-samples", "8"], "--lr-warmup-samples needs --train-samples"),
    (["--train-samples", "80", "--lr-warmup-samples", "8", "--lr-warmup-iters", "2"],
     "give --lr-warmup-samples or --lr-warmup-iters, not both"),
])
def test_sample_schedule_errors(argv, message):
    with pytest.raises(ConfigError) as info:
        parse_args(TINY + argv)
    assert str(info.value).startswith(message)


def test_zero_warmup_samples_with_iterations_is_allowed_as_in_megatron():
    assert parse_args(TINY + ["--train-iters", "4", "--lr-warmup-samples", "0"]).training.lr_warmup_iters == 0


def test_moe_layer_freq_megatron_expression():
    run = parse_args(["--preset", "tiny-moe", "--num-layers", "5", "--moe-layer-freq", "[0]*2+[1]*3"])
    assert run.model.moe_layer_freq == [0, 0, 1, 1, 1]
    with pytest.raises(ConfigError, match="--moe-layer-freq"):
        parse_args(["--preset", "tiny-moe", "--moe-layer-freq", "[0]*x"])


def test_finetune_loads_neither_optimizer_nor_rng():
    ck = parse_args(TINY + ["--train-iters", "2", "--finetune"]).checkpoint
    assert ck.finetune and ck.no_load_optim and ck.no_load_rng
    ck = parse_args(TINY + ["--train-iters", "2"]).checkpoint
    assert not (ck.no_load_optim or ck.no_load_rng)


def test_defaults_follow_megatron_and_presets_keep_theirs():
    m, t, ck = ModelConfig(), TrainingConfig(), CheckpointConfig()
    assert (m.qk_layernorm, m.norm_epsilon) == (False, 1e-5)
    assert (t.adam_beta2, t.lr_decay_style, t.distributed_timeout_minutes) == (0.999, "linear", 10)
    assert t.weight_decay == 0.01
    assert ck.keep_last == 0
    for name in ("tiny-moe", "tiny-dense", "llada2.0-mini", "llada2.0-flash", "llada-moe-7b-a1b"):
        preset = get_preset(name)
        assert (preset.qk_layernorm, preset.norm_epsilon) == (True, 1e-6), name


def test_example_configs_keep_their_training_values():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "configs")
    for name in sorted(os.listdir(root)):
        run = parse_args(["--config", os.path.join(root, name)])
        # post-training (SFT, DPO) follows dFactory's Adam (0.9, 0.999), METHOD.md 7.1
        beta2 = 0.999 if name.endswith(("_sft.yaml", "_dpo.yaml")) else 0.95
        assert run.training.adam_beta2 == beta2 and run.checkpoint.keep_last == 3, name
        table = _field_table()
        for key, value in read_yaml(os.path.join(root, name)).items():  # every value it sets is kept
            if key != "preset":
                section, f, _ = table[key]
                assert getattr(getattr(run, section), f.name) == _coerce(key, value, table), (name, key)
        # DPO starts at the final SFT learning rate and keeps it (METHOD.md 7.2)
        assert run.training.lr_decay_style in (("constant",) if name.endswith("_dpo.yaml") else ("WSD", "cosine")), name


def test_tokenizer_type_and_hub_names(tmp_path):
    hub = DataConfig(data_path=["x"], tokenizer_model="Qwen/Qwen3-30B-A3B", tokenizer_type="HuggingFaceTokenizer")
    for files in (True, False):
        with pytest.raises(ConfigError, match=r"looks like a Hugging Face hub name: nothing is downloaded"):
            check_tokenizer(hub, files=files)
    check_tokenizer(DataConfig(data_path=["x"], tokenizer_model=str(tmp_path / "missing.model")), files=False)
    with pytest.raises(ConfigError, match="file not found"):
        check_tokenizer(DataConfig(data_path=["x"], tokenizer_model=str(tmp_path / "missing.model")))
    json_file = tmp_path / "tokenizer.json"
    json_file.write_text("{}")
    with pytest.raises(ConfigError, match="pass --tokenizer-type HuggingFaceTokenizer"):
        check_tokenizer(DataConfig(data_path=["x"], tokenizer_model=str(json_file),
                                   tokenizer_type="SentencePieceTokenizer"))
    check_tokenizer(DataConfig(data_path=["x"], tokenizer_model=str(json_file), tokenizer_type="HuggingFaceTokenizer"))
    check_tokenizer(DataConfig(data_path=["x"], tokenizer_type="NullTokenizer"))  # no file needed
    with pytest.raises(ConfigError, match="NullTokenizer reads no file"):
        check_tokenizer(DataConfig(data_path=["x"], tokenizer_model=str(json_file), tokenizer_type="NullTokenizer"))
    with pytest.raises(ConfigError, match="--data-path needs --tokenizer-model"):
        check_tokenizer(DataConfig(data_path=["x"]))


def test_lr_warmup_init_starts_the_warmup():
    from megatron_dllm.train.loop import build_scheduler

    run = parse_args(TINY + ["--train-iters", "20", "--lr", "1e-3", "--lr-warmup-iters", "10",
                             "--lr-warmup-init", "1e-4"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, run, 20)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    scheduler.step(increment=5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))


def test_distributed_timeout_reaches_init_process_group(monkeypatch):
    import megatron_dllm.platform.distributed as distributed
    from megatron_dllm.pretrain import main

    seen = {}

    def fake_init(device, timeout_s=600):
        seen["timeout_s"] = timeout_s
        raise KeyboardInterrupt  # stop before any set-up

    monkeypatch.setattr(distributed, "init_process_group", fake_init)
    with pytest.raises(KeyboardInterrupt):
        main(TINY + ["--train-iters", "2", "--distributed-timeout-minutes", "60"])
    assert seen["timeout_s"] == 3600
    with pytest.raises(ConfigError, match="--distributed-timeout-minutes must be >= 1"):
        check_run(parse_args(TINY + ["--train-iters", "2", "--distributed-timeout-minutes", "0"]), 1)


def test_exit_duration_is_one_decision(process_group, monkeypatch):
    from megatron_dllm.train import loop

    monkeypatch.setattr(loop, "_START_TIME", time.time() - 150)
    assert loop._out_of_time(2) is True
    assert loop._out_of_time(3) is False
    assert loop._out_of_time(None) is False
    with pytest.raises(ConfigError, match="--exit-duration-in-mins must be >= 1"):
        check_run(parse_args(TINY + ["--train-iters", "2", "--exit-duration-in-mins", "0"]), 1)


def test_eod_mask_loss(process_group):
    from megatron_dllm.data.datasets import build_datasets

    def first_rows(eod_mask_loss):
        train = build_datasets(DataConfig(mock_data=True, split="1,0,0", eod_mask_loss=eod_mask_loss),
                               seq_length=32, num_samples=(16, 0, 0), seed=3, eod_id=62)[0]
        return [train[i] for i in range(16)]

    plain, masked = first_rows(False), first_rows(True)
    eods = 0
    for a, b in zip(plain, masked):
        assert torch.equal(a["tokens"], b["tokens"])
        is_eod = a["tokens"] == 62
        eods += int(is_eod.sum())
        assert torch.equal(b["loss_mask"], a["loss_mask"] & ~is_eod)
    assert eods > 0 and bool(plain[0]["loss_mask"].all())
