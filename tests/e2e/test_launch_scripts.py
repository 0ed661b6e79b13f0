"""Issue 17: the flag lists of four public Megatron-LM launch scripts pass ``pretrain --dry-run``.

Each fixture (tests/fixtures/launch_scripts/*.txt) is split into the flags this package wires, the
flags it accepts with no effect (megatron_flags.ACCEPTED) and the flags it does not support. Without
the unsupported ones the list dry-runs (exit 0) for the world size the script runs at; each
unsupported one alone is a one-line 'not supported: FLAG (why)' error, and the whole list stops at
the first of them. The counts are printed (pytest -s) for the issue's note.
"""

import os

import pytest

from megatron_dllm.arguments import parse_args
from megatron_dllm.config import ConfigError
from megatron_dllm.megatron_flags import ACCEPTED, NOT_SUPPORTED, NOT_SUPPORTED_VALUES

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "launch_scripts")

# script -> (WORLD_SIZE it runs at, flags the test adds, wired / accepted / not supported counts)
SCRIPTS = {
    # 8 GPUs x 4 nodes: PP 4 x EP 8. As under Megatron-LM's default, its --moe-grouped-gemm selects the
    # Transformer Engine path (checked installed at a real start, not by the dry run).
    "mixtral_8x7b": (32, [], (54, 5, 0)),
    "deepseek_v3_mfsdp": (8, [], (76, 23, 21)),       # EP 8
    # TP 4 x EP 2. The RL script sets no training length or data (its environment provides them),
    # and leaves sequence parallelism off, which Megatron-Core's MoELayer refuses in training with
    # TP > 1 (test below).
    "qwen3_30b_a3b_moe": (8, ["--train-iters", "100", "--mock-data", "--sequence-parallel"], (47, 10, 10)),
    "ling_v2_pretrain_4k": (8, [], (76, 17, 6)),      # EP 8
}


def read_fixture(name, root):
    """[(flag, [values])] of a fixture, placeholders <NAME> replaced by paths under ``root``."""
    entries = []
    with open(os.path.join(FIXTURES, name + ".txt")) as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("# source: github.com/"), name
    for line in lines:
        if not line.startswith("--"):
            continue
        flag, *values = line.split()
        values = [v.replace("<", os.path.join(str(root), "")).replace(">", "") for v in values]
        entries.append((flag, values))
    return entries


def not_supported(flag, values):
    return flag in NOT_SUPPORTED or any((flag, v) in NOT_SUPPORTED_VALUES for v in values)


def classify(entries):
    wired = [e for e in entries if e[0] not in ACCEPTED and not not_supported(*e)]
    accepted = [e for e in entries if e[0] in ACCEPTED and not not_supported(*e)]
    rejected = [e for e in entries if not_supported(*e)]
    return wired, accepted, rejected


def argv_of(entries):
    return [token for flag, values in entries for token in [flag, *values]]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_dry_runs_without_its_unsupported_flags(name, tmp_path, capsys, monkeypatch):
    from megatron_dllm.pretrain import main

    world, extra, counts = SCRIPTS[name]
    entries = read_fixture(name, tmp_path)
    wired, accepted, rejected = classify(entries)
    assert (len(wired), len(accepted), len(rejected)) == counts
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.delenv("RANK", raising=False)
    kept = [e for e in entries if not not_supported(*e)]
    assert main(argv_of(kept) + extra + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    restated = [line for line in out.splitlines() if line.startswith("accepted, no effect here: ")]
    assert len(restated) == len({" ".join([f, *v]) for f, v in accepted})
    assert f"world_size {world}," in out and "memory per GPU" in out and '"model": {' in out
    assert not os.listdir(tmp_path)  # nothing was written, no placeholder path was created
    with capsys.disabled():
        print(f"\n{name}: {len(entries)} flags: {len(wired)} wired, {len(accepted)} accepted with no "
              f"effect, {len(rejected)} not supported")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_unsupported_flag_is_a_one_line_error(name, tmp_path):
    world, extra, _ = SCRIPTS[name]
    entries = read_fixture(name, tmp_path)
    kept = [e for e in entries if not not_supported(*e)]
    for flag, values in [e for e in entries if not_supported(*e)]:
        with pytest.raises(ConfigError) as info:
            parse_args(argv_of(kept) + extra + [flag, *values])
        message = str(info.value)
        assert message.startswith(f"not supported: {flag}") and "\n" not in message, message
        assert message.endswith(")") and "(" in message


@pytest.mark.parametrize("name", ["deepseek_v3_mfsdp", "ling_v2_pretrain_4k", "qwen3_30b_a3b_moe"])
def test_full_script_stops_at_its_first_unsupported_flag(name, tmp_path, capsys, monkeypatch):
    from megatron_dllm.pretrain import main

    world, extra, _ = SCRIPTS[name]
    entries = read_fixture(name, tmp_path)
    first = next(flag for flag, values in entries if not_supported(flag, values))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert main(argv_of(entries) + extra + ["--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: not supported: {first}"), err


def test_qwen3_moe_with_tp_needs_sequence_parallel(tmp_path, capsys, monkeypatch):
    from megatron_dllm.pretrain import main

    entries = [e for e in read_fixture("qwen3_30b_a3b_moe", tmp_path) if not not_supported(*e)]
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(argv_of(entries) + ["--train-iters", "100", "--mock-data", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --sequence-parallel" in err[0], err


def test_dry_run_checks_the_world_size_and_only_rank0_prints(tmp_path, capsys, monkeypatch):
    from megatron_dllm.pretrain import main

    argv = argv_of(read_fixture("mixtral_8x7b", tmp_path)) + SCRIPTS["mixtral_8x7b"][1] + ["--dry-run"]
    monkeypatch.setenv("WORLD_SIZE", "24")  # PP 4 x EP 8 needs a multiple of 32
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: world size 24 is not divisible by EP x expert-TP x PP = 32"], err
    monkeypatch.setenv("WORLD_SIZE", "32")
    monkeypatch.setenv("RANK", "3")  # under torchrun: every rank validates, rank 0 alone builds and prints
    assert main(argv) == 0
    assert capsys.readouterr().out == ""


def test_vocab_size_comes_from_the_tokenizer_unless_given(tmp_path, capsys, monkeypatch):
    from megatron_dllm.data.synthetic import synthetic_lines, train_sentencepiece
    from megatron_dllm.data.tokenizer import load_tokenizer
    from megatron_dllm.pretrain import main

    model = train_sentencepiece(synthetic_lines(200), str(tmp_path / "tok"))
    size = load_tokenizer(model).vocab_size
    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--train-iters", "2", "--data-path", str(tmp_path / "nothing"), "--tokenizer-model", model,
            "--tokenizer-type", "Llama2Tokenizer", "--dry-run"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(base) == 0
    out = capsys.readouterr().out
    assert f'"vocab_size": {size},' in out and f"note: --vocab-size {size} from the tokenizer" in out
    assert main(base + ["--vocab-size", "4096"]) == 0
    assert '"vocab_size": 4096,' in capsys.readouterr().out


def test_hub_name_tokenizer_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """DeepSeek-V3's and Qwen3's scripts pass HF hub names; nothing is downloaded here."""
    from megatron_dllm.pretrain import main

    world, extra, _ = SCRIPTS["qwen3_30b_a3b_moe"]
    kept = [e for e in read_fixture("qwen3_30b_a3b_moe", tmp_path) if not not_supported(*e)]
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert main(argv_of(kept) + extra + ["--tokenizer-model", "Qwen/Qwen3-30B-A3B", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Qwen/Qwen3-30B-A3B looks like a Hugging Face hub name: nothing is downloaded" in err[0]
