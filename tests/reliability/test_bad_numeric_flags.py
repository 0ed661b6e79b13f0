"""tools/plan_memory.py with numbers that mean nothing: a one-line error naming the flag, exit 2
(before: -5 GiB GPUs, NaN, 0 or negative batch sizes and sequence lengths were planned for, and
--vpp 0 / -2 ended in a ZeroDivisionError / IndexError)."""

import os
import sys

import pytest

from tests.e2e.cli import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
try:
    import plan_memory
finally:
    sys.path.pop(0)


@pytest.mark.parametrize("flags,message", [
    (["--gpu-memory-gb", "-5"], "--gpu-memory-gb -5.0 must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--gpu-memory-gb", "0"], "--gpu-memory-gb 0.0 must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--gpu-memory-gb", "nan"], "--gpu-memory-gb nan must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--gpu-memory-gb", "inf"], "--gpu-memory-gb inf must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--reserved-gb", "-1"], "--reserved-gb -1.0 must be >= 0 and below --gpu-memory-gb 80, e.g. --reserved-gb 4"),
    (["--gpu-memory-gb", "16", "--reserved-gb", "16"],
     "--reserved-gb 16.0 must be >= 0 and below --gpu-memory-gb 16, e.g. --reserved-gb 4"),
    (["--global-batch-size", "0"], "--global-batch-size 0 must be >= 1"),
    (["--global-batch-size", "-8"], "--global-batch-size -8 must be >= 1"),
    (["--seq-length", "0"], "--seq-length 0 must be >= 1"),
    (["--vpp", "0"], "--virtual-pipeline-model-parallel-size 0 must be >= 1 (or left out)"),
    (["--vpp", "-2"], "--virtual-pipeline-model-parallel-size -2 must be >= 1 (or left out)"),
    (["--etp", "0"], "--expert-tensor-parallel-size 0 must be >= 1 (or left out)"),
    (["--dp", "0"], "--dp must be >= 1, got 0"),
    (["--tp", "0"], "--tensor-model-parallel-size must be >= 1"),
])
def test_plan_memory_refuses_meaningless_numbers(capsys, flags, message):
    assert plan_memory.main(["--preset", "tiny-moe", "--device", "cpu", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n"
    assert captured.out == ""


# --- pretraining: every numeric setting has a range (megatron_dllm/config_ranges.py) --------------

PRETRAIN = ["--config", os.path.join(ROOT, "examples", "configs", "tiny_moe_cpu.yaml"), "--mock-data"]


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "--lr -1.0 must be a finite number >= 0"),
    (["--lr", "nan"], "--lr nan must be a finite number >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1 must be a finite number >= 0"),
    (["--lr-warmup-init", "-0.5"], "--lr-warmup-init -0.5 must be a finite number >= 0"),
    (["--adam-beta2", "1"], "--adam-beta2 1.0 must be a finite number >= 0 and < 1"),
    (["--adam-eps", "0"], "--adam-eps 0.0 must be a finite number > 0"),
    (["--hidden-dropout", "2"], "--hidden-dropout 2.0 must be a finite number >= 0 and < 1"),
    (["--global-batch-size", "0"], "--global-batch-size 0 must be an integer >= 1"),
    (["--eval-interval", "-1"], "--eval-interval -1 must be an integer >= 0"),
    (["--eval-iters", "0"], "--eval-iters 0 must be an integer >= 1"),
    (["--log-interval", "0"], "--log-interval 0 must be an integer >= 1"),
    (["--hidden-size", "0"], "--hidden-size 0 must be an integer >= 1"),
    (["--num-attention-heads", "0"], "--num-attention-heads 0 must be an integer >= 1"),
    (["--moe-router-topk", "0"], "--moe-router-topk 0 must be an integer >= 1"),
    (["--dllm-t-eps", "0"], "--dllm-t-eps 0.0 must be a finite number > 0 and < 1"),
    (["--dllm-t-low", "0.9", "--dllm-t-high", "0.1"], "--dllm-t-low 0.9 must not exceed --dllm-t-high 0.1"),
    (["--dllm-t-low", "0", "--dllm-t-high", "0.5"], "--dllm-t-low 0.0 must be a finite number > 0 and <= 1"),
    (["--ckpt-keep-last", "-1"], "--ckpt-keep-last -1 must be an integer >= 0"),
    (["--seed", "-1"], "--seed -1 must be an integer >= 0"),
    (["--lr-warmup-iters", "-1"], "--lr-warmup-iters -1 must be an integer >= 0"),
])
def test_pretrain_refuses_meaningless_numbers(flags, message):
    """Before: all of these were accepted by the preflight (training on with them or failing later)."""
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.config import ConfigError
    from megatron_dllm.train.preflight import check_run

    with pytest.raises(ConfigError) as err:
        check_run(parse_args(PRETRAIN + flags), world_size=1)
    assert str(err.value) == message


def test_the_example_configs_are_inside_the_ranges():
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.config_ranges import check_ranges

    folder = os.path.join(ROOT, "examples", "configs")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".yaml"))
    assert len(names) >= 3
    for name in names:
        check_ranges(parse_args(["--config", os.path.join(folder, name)]))
