"""Training variants of issue 12 against definitions that do not use them (tests/distributed/variant_workers.py)."""

import pytest

from tests.distributed.harness import run_ranks
from tests.distributed.variant_workers import variants_worker


@pytest.fixture(scope="module")
def variants():
    return run_ranks(variants_worker, 1, timeout=300)[0]


def test_token_shift_at_block_size_one_is_ar_training(variants):
    ar_sum, ar_count = variants["ar"]
    shift_sum, shift_count = variants["shift_block1"]
    assert shift_count == ar_count
    assert shift_sum == pytest.approx(ar_sum, rel=1e-5)


def test_causal_clean_stream_ar_term_is_the_ar_loss(variants):
    ar_sum, ar_count = variants["ar"]
    term, tokens = variants["clean_ar_term"]
    assert tokens == ar_count
    assert term == pytest.approx(ar_sum, rel=1e-5)


def test_ar_term_is_added_with_its_weight(variants):
    weighted, plain, term = variants["weighted"]
    assert weighted == pytest.approx(plain + 0.3 * term, rel=1e-5)


@pytest.mark.parametrize("name", ["same", "token_shift", "causal_clean"])
def test_prediction_of_a_masked_token_never_sees_it(variants, name):
    own, other = variants["leaks"][name]
    assert own == 0.0
    assert other > 1e-4  # the edit is visible where it may be (a later block's prediction)


def test_complementary_masks_are_disjoint_and_cover(variants):
    c = variants["complementary"]
    assert c["rows"] == 4 and c["same_x0"]
    assert c["disjoint"] and c["cover"]
    assert c["t_sum"] == pytest.approx(1.0)
