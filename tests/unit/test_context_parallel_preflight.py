"""--context-parallel-size: what the preflight accepts and the one-line errors for what it cannot run."""

import pytest

from megatron_dllm.arguments import parse_args
from megatron_dllm.config import ConfigError
from megatron_dllm.train.preflight import check_run

BASE = ["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--seq-length", "64", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--train-iters", "2"]
BD = ["--dllm-objective", "bd", "--dllm-block-schedule", "stable:8@inf"]


@pytest.mark.parametrize("extra, world", [
    (BD + ["--context-parallel-size", "2"], 2),
    (BD + ["--context-parallel-size", "4"], 4),
    (["--dllm-objective", "ar", "--context-parallel-size", "2"], 2),
    (["--dllm-objective", "mdlm", "--context-parallel-size", "2", "--tensor-model-parallel-size", "2",
      "--sequence-parallel"], 4),
])
def test_supported_layouts_pass(extra, world):
    check_run(parse_args(BASE + extra), world, files=False)


@pytest.mark.parametrize("extra, world, message", [
    (BD + ["--context-parallel-size", "2", "--dllm-attention-backend", "te"], 2,
     "Transformer Engine's context parallelism assumes a causal or full mask"),
    (BD + ["--context-parallel-size", "2", "--dllm-loss-norm", "sequence"], 2,
     "--dllm-loss-norm sequence is not supported with --context-parallel-size > 1"),
    (BD + ["--context-parallel-size", "3", "--seq-length", "64"], 3,
     "--seq-length 64 must be a multiple of --context-parallel-size 3 so every rank"),
    (BD + ["--context-parallel-size", "2", "--tensor-model-parallel-size", "2", "--sequence-parallel",
           "--seq-length", "66", "--dllm-block-schedule", "stable:66@inf"], 4,
     "must be a multiple of --context-parallel-size 2 x --tensor-model-parallel-size 2 (sequence parallelism)"),
])
def test_unsupported_layouts_name_the_fix(extra, world, message):
    with pytest.raises(ConfigError) as info:
        check_run(parse_args(BASE + extra), world, files=False)
    assert message in str(info.value) and "\n" not in str(info.value)
