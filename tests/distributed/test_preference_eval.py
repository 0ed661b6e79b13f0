"""generate/preference_eval.py (tools/eval_preference.py) on real tiny models: the preference and
implicit-reward accuracies, margin and DPO loss equal those computed from ``dpo_estimate``'s reference
ELBOs with the same noise, in the MDLM and the block-diffusion layout, whatever the batching; the
variance ratio's two variances equal ``dpo_estimate.loss_variance``; a policy scored against itself
has a VRPO variance of exactly 0."""

import math

import pytest

from tests.distributed.dpo_workers import preference_eval_worker
from tests.distributed.harness import run_ranks


@pytest.fixture(scope="module")
def scored():
    return run_ranks(preference_eval_worker, 1, timeout=300)[0]


@pytest.mark.parametrize("layout", ["mdlm", "bd"])
def test_metrics_equal_the_reference_elbos(scored, layout):
    got, want = scored[layout]["got"], scored[layout]["want"]
    assert got["pairs"] == want["pairs"] == 7 and got["elbo_samples"] == 3
    for key in ("preference_accuracy", "reward_accuracy"):
        assert got[key] == want[key], key
    for key in ("elbo_chosen", "elbo_rejected", "dpo_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    # beta x a difference of ELBO differences of hundreds of nats, whose fp32 rounding (in either
    # computation) it keeps: as tests/e2e/test_dpo_training.py, absolute 1e-5
    assert got["reward_margin"] == pytest.approx(want["reward_margin"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("layout", ["mdlm", "bd"])
def test_batching_does_not_change_the_numbers(scored, layout):
    got, whole = scored[layout]["got"], scored[layout]["whole"]
    for key, value in got.items():
        assert whole[key] == pytest.approx(value, rel=1e-5, abs=1e-5 if key == "reward_margin" else 1e-7), key


def test_variance_ratio_equals_the_reference_variances(scored):
    got, want = scored["variance"]["got"], scored["variance"]["want"]
    assert got["repeats"] == 5 and got["pairs"] == 4 and got["elbo_samples"] == 2
    assert got["variance_naive"] == pytest.approx(want["naive"], rel=1e-4)
    assert got["variance_vrpo"] == pytest.approx(want["vrpo"], rel=1e-4)
    assert got["variance_ratio"] == pytest.approx(want["naive"] / want["vrpo"], rel=1e-3)
    lo, hi = got["variance_ratio_interval_90"]
    assert lo <= hi


def test_a_model_against_itself_has_no_vrpo_variance(scored):
    same = scored["variance_same_model"]
    assert same["variance_vrpo"] == 0.0 and math.isinf(same["variance_ratio"])
    assert same["variance_naive"] > 0
