"""The objective registry (megatron_dllm/objectives/): one object per --dllm-objective, chosen in one
place, and what each owns (model sequence length, micro-batch size, report keys, eval t points)."""

import dataclasses

import pytest

from megatron_dllm.arguments import parse_args
from megatron_dllm.config import ConfigError, DiffusionConfig
from megatron_dllm.objectives import OBJECTIVES, StepContext, objective_for, objective_type
from tests.e2e.cli import TINY

L = 64  # examples/configs/tiny_moe_cpu.yaml: seq-length 64, micro-batch-size 4, 5 t buckets
BASE_KEYS = ("loss_sum", "num_tokens", "num_noised", "correct")
BUCKET_KEYS = tuple(f"bucket{k}_{kind}" for k in range(5) for kind in ("loss_sum", "count"))


def _objective(*flags):
    run = parse_args(["--config", TINY, "--mock-data", *flags])
    return objective_for(run, mask_token_id=255, device="cpu")


def test_registry_matches_the_flag_choices():
    choices = next(f for f in dataclasses.fields(DiffusionConfig) if f.name == "objective").metadata["choices"]
    assert sorted(OBJECTIVES) == sorted(choices)
    assert all(cls.name == name for name, cls in OBJECTIVES.items())


def test_unknown_objective_names_the_choices():
    with pytest.raises(ConfigError) as exc:
        objective_type("rl")
    assert str(exc.value) == "--dllm-objective 'rl' is not an objective: choose one of ar, bd, dpo, mdlm, sft"


def test_ar_objective():
    ar = _objective("--dllm-objective", "ar", "--dllm-block-schedule", "")
    assert (ar.layout, ar.causal, ar.uses_mask_token) == ("ar", True, False)
    assert (ar.model_seq_length, ar.micro_batch_size) == (L, 4)
    assert ar.phase_at(10 ** 6) == (ar, 1, "ar")
    assert ar.report_keys(StepContext(iteration=0, block_size=1)) == BASE_KEYS
    assert ar.eval_points() == [None]


def test_mdlm_objective():
    mdlm = _objective("--dllm-objective", "mdlm", "--dllm-block-schedule", "", "--dllm-complementary-masking",
                      "--dllm-bd-micro-batch-size", "2")
    assert (mdlm.layout, mdlm.causal, mdlm.uses_mask_token) == ("mdlm", False, True)
    assert (mdlm.model_seq_length, mdlm.micro_batch_size) == (L, 4)  # the BD micro-batch size is not its
    assert mdlm.phase_at(0) == (mdlm, L, "stable")
    train, valid = StepContext(iteration=3, block_size=L), StepContext(iteration=0, block_size=L, eval_t=0.5)
    assert (mdlm.rows_per_sample(train), mdlm.rows_per_sample(valid)) == (2, 1)  # complementary copies
    assert mdlm.report_keys(train) == BASE_KEYS + BUCKET_KEYS
    # the validation ELBO: midpoints of [eps, 1], weighted 1/t over all tokens whatever the training weights
    assert mdlm.eval_points() == [0.001 + 0.999 * (k + 0.5) / 5 for k in range(5)]
    assert mdlm.loss_terms(valid)[:2] == ("inv_t", "all_tokens")


def test_bd_objective_follows_the_curriculum():
    bd = _objective("--dllm-bd-micro-batch-size", "2", "--dllm-clean-stream-causal", "--dllm-ar-loss-weight", "0.3",
                    "--dllm-t-low", "0.3", "--dllm-t-high", "0.8", "--dllm-eval-t-points", "2")
    assert (bd.layout, bd.causal, bd.model_seq_length, bd.micro_batch_size) == ("bd", False, 2 * L, 2)
    step = StepContext(iteration=0, block_size=4)
    assert bd.report_keys(step) == BASE_KEYS + BUCKET_KEYS + ("ar_loss_sum", "ar_tokens")
    assert bd.eval_points() == pytest.approx([0.425, 0.675], abs=0, rel=1e-15)
    # warm-up 1 -> 4 -> 16 -> 32 over 2048 tokens each, then the stable phase at L: an MDLM step
    assert bd.phase_at(0) == (bd, 1, "warmup")
    assert bd.phase_at(3 * 2048) == (bd, 32, "warmup")
    stable, block, phase = bd.phase_at(4 * 2048)
    assert (block, phase, stable.layout, stable.model_seq_length, stable.micro_batch_size) == (L, "stable", "mdlm",
                                                                                                L, 4)
    assert stable.report_keys(step) == BASE_KEYS + BUCKET_KEYS  # no clean stream, no AR term
    assert bd.at_block(8) is bd and bd.at_block(L) is stable


@pytest.mark.parametrize("flags,message", [
    (["--dllm-block-schedule", ""], "--dllm-objective bd needs --dllm-block-schedule (e.g. 'stable:32@inf')"),
    (["--dllm-objective", "mdlm"], "--dllm-block-schedule is only used with --dllm-objective bd"),
    (["--dllm-objective", "ar", "--dllm-block-schedule", "", "--dllm-complementary-masking"],
     "--dllm-token-shift / --dllm-clean-stream-causal / --dllm-complementary-masking are dLLM options: "
     "use them with --dllm-objective bd or mdlm"),
    (["--dllm-objective", "mdlm", "--dllm-block-schedule", "", "--dllm-clean-stream-causal"],
     "--dllm-clean-stream-causal needs the block-diffusion layout: use --dllm-objective bd (the MDLM layout "
     "has no clean stream)"),
])
def test_each_objective_checks_its_options(flags, message):
    run = parse_args(["--config", TINY, "--mock-data", *flags])
    with pytest.raises(ConfigError) as exc:
        objective_type(run.diffusion.objective).check_config(run.diffusion)
    assert str(exc.value) == message
