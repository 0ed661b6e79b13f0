"""Activation recompute (Megatron-Core's full / selective) changes nothing but memory: the tiny MoE
trains with and without it to the same losses, gradient norms, weights and expert biases, in each
objective (AR, MDLM, block diffusion).

Bit for bit, except ``layernorm``: Megatron-Core recomputes the norms with ``CheckpointWithoutOutput``,
whose backward returns the input gradient from a separate autograd call, so the residual stream's
gradient is summed in another order (differences at float32 rounding, bounded below).
"""

import pytest

from tests.distributed.harness import run_ranks
from tests.distributed.recompute_workers import recompute_runs

OBJECTIVES = [["--dllm-objective", "ar"], ["--dllm-objective", "mdlm"],
              ["--dllm-objective", "bd", "--dllm-block-schedule", "stable:8@inf"]]
SELECTIVE = ["--recompute-granularity", "selective"]
VARIANTS = [
    ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"],
    ["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "1"],
    SELECTIVE,  # core_attn (the default): our core attention, recomputed
    SELECTIVE + ["--recompute-modules", "moe"],
    SELECTIVE + ["--recompute-modules", "shared_experts", "core_attn"],
    SELECTIVE + ["--recompute-modules", "layernorm"],
]
ROUNDING_ONLY = {" ".join(SELECTIVE + ["--recompute-modules", "layernorm"])}


@pytest.fixture(scope="module")
def results():
    return run_ranks(recompute_runs, 1, args=("tiny-moe", OBJECTIVES, VARIANTS, 3), timeout=900)[0]


@pytest.mark.parametrize("objective", [" ".join(o) for o in OBJECTIVES])
@pytest.mark.parametrize("variant", [" ".join(v) for v in VARIANTS])
def test_recompute_trains_as_without(results, objective, variant):
    got = results[(objective, variant)]
    assert got["recompute"] in ("full", "selective")  # the flag reached Megatron-Core's config
    assert got["expert_bias_moved"]  # the router's token counts fed the bias update (state at risk)
    if variant not in ROUNDING_ONLY:
        assert got["loss_equal"] and got["grad_norm_equal"], (got["losses"], got["grad_norms"])
        assert got["params_equal"] and got["expert_bias_equal"]
        return
    (base, rec), (base_norm, rec_norm) = got["losses"], got["grad_norms"]
    assert base[0] == rec[0]  # the first forward is the same computation
    assert abs(base_norm[0] - rec_norm[0]) <= 1e-7 * base_norm[0]  # its gradients, to float32 rounding
    # Adam's update divides by sqrt(v): rounding-level gradient differences become ~1e-6 in weights
    assert all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(base + base_norm, rec + rec_norm)), got["losses"]
    assert got["max_param_diff"] < 1e-4 and got["expert_bias_equal"]
