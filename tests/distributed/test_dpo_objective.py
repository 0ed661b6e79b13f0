"""The DPO objective on a real tiny model (tests/distributed/dpo_workers.py): its loss equals
``dpo_estimate`` (the reference form over scoring callables) for the same seed and iteration, under
VRPO and naive noise, in the MDLM and the block-diffusion layout, equals a hand computation on fixed
ELBOs, never noises the prompt, and trains the policy only."""

import pytest

from tests.distributed.dpo_workers import PAIRS, dpo_unit_worker
from tests.distributed.harness import run_ranks


@pytest.fixture(scope="module")
def dpo():
    return run_ranks(dpo_unit_worker, 1, timeout=300)[0]


@pytest.mark.parametrize("sampling", ["vrpo", "naive", "bd", "bd_naive"])
def test_loss_equals_the_reference_estimate(dpo, sampling):
    got = dpo[sampling]
    assert got["count"] == len(PAIRS)
    for key in ("loss", "margin", "kl"):
        mine, want = got[key]
        assert mine == pytest.approx(want, rel=1e-5, abs=1e-6), key
    assert got["correct"][0] == got["correct"][1]


def test_rows_are_pairs_times_responses_times_draws(dpo):
    assert dpo["vrpo"]["rows"] == (len(PAIRS) * 2 * 3, 64)
    assert dpo["naive"]["rows"] == (len(PAIRS) * 2 * 2, 64)
    assert dpo["bd"]["rows"] == (len(PAIRS) * 2 * 2, 128)  # [xt ; x0]
    assert dpo["bd"]["clean_half"] is True and dpo["bd_naive"]["clean_half"] is True


def test_reference_scores_the_policy_rows_under_vrpo_only(dpo):
    assert dpo["vrpo"]["shared_rows"] is True
    assert dpo["naive"]["shared_rows"] is False
    assert dpo["bd"]["shared_rows"] is True and dpo["bd_naive"]["shared_rows"] is False


@pytest.mark.parametrize("sampling", ["vrpo", "naive", "bd", "bd_naive"])
def test_prompt_is_never_noised(dpo, sampling):
    assert dpo[sampling]["prompt_noised"] == 0
    assert dpo[sampling]["prompt_changed"] == 0


def test_loss_on_fixed_elbos_equals_a_hand_computation(dpo):
    got = dpo["hand"]
    assert got["count"] == len(PAIRS)
    assert got["loss"][0] == pytest.approx(got["loss"][1], rel=1e-5)
    assert got["margin"][0] == pytest.approx(got["margin"][1], rel=1e-5)
    assert got["correct"][0] == got["correct"][1]


def test_only_the_policy_gets_gradients(dpo):
    assert dpo["policy_grad"] > 0
    assert dpo["reference_grad"] == 0
