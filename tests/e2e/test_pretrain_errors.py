"""Bad input stops the pretraining CLI before any compute: exit 2 and one line naming the fix."""

import pytest

from megatron_dllm.arguments import parse_args
from megatron_dllm.config import ConfigError
from megatron_dllm.data.synthetic import synthetic_lines, train_sentencepiece
from megatron_dllm.train.preflight import check_run
from tests.e2e.cli import TINY, pretrain

BASE = ["--config", TINY, "--mock-data"]


def _error_line(proc):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "iteration" not in proc.stdout
    return lines[0]


def _check(argv, world_size=1):
    check_run(parse_args(argv), world_size)


def test_block_size_must_divide_sequence_length():
    with pytest.raises(ConfigError, match=r"--dllm-block-schedule: .*24.*64"):
        _check(BASE + ["--dllm-block-schedule", "warmup:1->24@1K; stable:L@inf"])


def test_global_batch_must_split_over_micro_batches_and_dp():
    with pytest.raises(ConfigError, match=r"--global-batch-size 6 is not divisible by --micro-batch-size 4 x data-parallel size 1"):
        _check(BASE + ["--global-batch-size", "6"])
    with pytest.raises(ConfigError, match=r"--global-batch-size 8 is not divisible by --micro-batch-size 4 x data-parallel size 4"):
        _check(BASE, world_size=4)


def test_unknown_config_key_suggests_the_flag(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny-moe\nmicro-batchsize: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'micro_batchsize' .*did you mean --micro-batch-size"):
        parse_args(["--config", str(bad)])


def test_cli_overrides_config_and_config_overrides_preset():
    run = parse_args(BASE + ["--lr", "0.5", "--disable-bias-linear"])
    assert run.training.lr == 0.5                       # flag over YAML (3e-3)
    assert run.training.global_batch_size == 8          # YAML over default
    assert run.model.moe_router_score_function == "sigmoid"  # preset
    assert run.model.add_bias_linear is False


def test_boolean_flags():
    run = parse_args(BASE + ["--no-load-optim", "--sequence-parallel", "--no-qk-layernorm",
                             "--tensor-model-parallel-size", "2"])
    assert run.checkpoint.no_load_optim is True
    assert run.parallel.sequence_parallel is True
    assert run.model.qk_layernorm is False
    assert parse_args(BASE).checkpoint.no_load_optim is False


def test_sequence_parallel_is_off_at_tp1_as_in_megatron():
    run = parse_args(BASE + ["--sequence-parallel"])
    assert run.parallel.sequence_parallel is False
    assert any("--sequence-parallel is off" in note for note in run.notes)


def test_abbreviations_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^unrecognized arguments: --tokenizer /x\.model \(see --help"):
        parse_args(BASE + ["--tokenizer", "/x.model"])


def test_missing_data_files(tmp_path):
    tok = tmp_path / "missing.model"
    with pytest.raises(ConfigError, match="--tokenizer-model .*file not found"):
        _check(["--preset", "tiny-moe", "--train-iters", "1", "--data-path", str(tmp_path / "nope"),
                "--tokenizer-model", str(tok)])


@pytest.mark.slow
def test_cli_missing_data_file_exits_2(tmp_path):
    model = train_sentencepiece(synthetic_lines(200), str(tmp_path / "tok"))
    proc = pretrain(["--preset", "tiny-moe", "--train-iters", "1", "--device", "cpu",
                     "--data-path", str(tmp_path / "corpus_text_document"), "--tokenizer-model", model],
                    check=False)
    line = _error_line(proc)
    assert "corpus_text_document" in line and "preprocess_data.py" in line


@pytest.mark.slow
def test_cli_tokenizer_without_mask_token_exits_2(tmp_path):
    model = train_sentencepiece(synthetic_lines(200), str(tmp_path / "tok"), user_defined_symbols=())
    proc = pretrain(["--preset", "tiny-moe", "--train-iters", "1", "--device", "cpu", "--mock-data",
                     "--tokenizer-model", model], check=False)
    assert "--dllm-mask-token-id" in _error_line(proc)


@pytest.mark.slow
def test_cli_checkpoint_of_another_architecture_exits_2(tmp_path):
    save = tmp_path / "ckpt"
    pretrain(BASE + ["--save", str(save), "--exit-interval", "1"])
    proc = pretrain(BASE + ["--load", str(save), "--hidden-size", "96"], check=False)
    line = _error_line(proc)
    assert "hidden_size: checkpoint 64 vs flags 96" in line
