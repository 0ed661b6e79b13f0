"""--recompute-*, --transformer-impl and --fp8-* flags: what Megatron-Core would refuse (or what cannot
run here) is a one-line error naming the flag first."""

import pytest

from megatron_dllm.arguments import parse_args
from megatron_dllm.config import ConfigError
from megatron_dllm.model.transformer_config import Execution

BASE = ["--preset", "tiny-moe", "--num-layers", "4", "--pipeline-model-parallel-size", "2"]


def _check(*flags):
    run = parse_args(BASE + list(flags))
    Execution.from_training(run.training).check(run.model, run.parallel)
    return Execution.from_training(run.training).transformer_config_kwargs()


def test_valid_modes_reach_the_transformer_config():
    assert _check() == {}
    assert _check("--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "2") == {
        "recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 2,
        "recompute_modules": None}
    assert _check("--recompute-granularity", "selective", "--recompute-modules", "moe", "layernorm")[
        "recompute_modules"] == ["moe", "layernorm"]


@pytest.mark.parametrize("flags, message", [
    (["--recompute-method", "uniform"], "need --recompute-granularity full or selective"),
    (["--recompute-granularity", "full"], "needs --recompute-method uniform|block and --recompute-num-layers"),
    (["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "3"],
     r"--recompute-num-layers 3: give 1..2 \(layers per pipeline stage\)"),
    (["--recompute-granularity", "selective", "--recompute-num-layers", "1"], "takes --recompute-modules"),
    (["--recompute-granularity", "selective", "--recompute-modules", "mla_up_proj"], "mla_up_proj"),
    (["--recompute-granularity", "selective", "--recompute-modules", "moe_act"], "needs --moe-grouped-gemm"),
    (["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "1",
      "--recompute-modules", "mlp"], "applies to --recompute-granularity selective only"),
])
def test_bad_combinations_are_one_line_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        _check(*flags)


def test_moe_modules_need_an_moe_model():
    run = parse_args(["--preset", "tiny-dense", "--recompute-granularity", "selective", "--recompute-modules", "moe"])
    with pytest.raises(ConfigError, match="need an MoE model"):
        Execution.from_training(run.training).check(run.model, run.parallel)


def _execution(*flags):
    run = parse_args(["--preset", "tiny-moe"] + list(flags))
    return run, Execution.from_training(run.training, run.model)


def test_transformer_engine_path_needs_te_installed():
    from megatron_dllm.model.transformer_config import transformer_engine_installed

    run, ex = _execution("--transformer-impl", "transformer_engine")
    assert ex.use_transformer_engine
    if not transformer_engine_installed():  # every CPU machine of this project
        with pytest.raises(ConfigError, match="Transformer Engine is not installed here .*use --transformer-impl local"):
            ex.check(run.model, run.parallel)
    ex.check(run.model, run.parallel, require_installed=False)  # --dry-run on a login node


@pytest.mark.parametrize("flags, message", [
    (["--transformer-impl", "local", "--moe-grouped-gemm"], "--moe-grouped-gemm needs --transformer-impl transformer_engine"),
    (["--transformer-impl", "local", "--fp8-format", "e4m3"], "--fp8-format e4m3 needs --transformer-impl transformer_engine"),
    (["--fp8-param-gather"], "--fp8-param-gather needs --fp8-format"),
    (["--transformer-impl", "transformer_engine", "--fp8-format", "hybrid"], "--fp8-format hybrid needs --bf16"),
])
def test_implementation_flags_are_checked(flags, message):
    run, ex = _execution(*flags)
    with pytest.raises(ConfigError, match=message):
        ex.check(run.model, run.parallel, bf16=False, require_installed=False)


def test_fp8_flags_reach_the_transformer_config():
    run, ex = _execution("--transformer-impl", "transformer_engine", "--fp8-format", "hybrid", "--fp8-recipe",
                         "blockwise", "--fp8-param-gather", "--bf16")
    ex.check(run.model, run.parallel, bf16=True, require_installed=False)
    assert ex.transformer_config_kwargs() == {"fp8": "hybrid", "fp8_recipe": "blockwise", "fp8_param": True}


@pytest.mark.parametrize("flags, te", [([], False), (["--moe-grouped-gemm"], True),
                                       (["--fp8-format", "hybrid", "--bf16"], True),
                                       (["--transformer-impl", "local"], False)])
def test_te_features_imply_the_te_path_as_megatron_lm_does(flags, te):
    from megatron_dllm.model.transformer_config import transformer_engine_installed

    run, ex = _execution(*flags)
    assert ex.use_transformer_engine is te
    ex.check(run.model, run.parallel, bf16=run.training.bf16, require_installed=False)
    if te and not transformer_engine_installed():
        with pytest.raises(ConfigError, match="Transformer Engine is not installed here"):
            ex.check(run.model, run.parallel, bf16=run.training.bf16)
