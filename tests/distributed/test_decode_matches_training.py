"""Decoding reads the logits training taught: for a noisy block whose earlier blocks are clean, the
slot logits of one decoding step (cached or not) equal the rows training's ``[xt ; x0]`` layout
uses for that block (``diffusion/masks.py`` kinds, ``diffusion/alignment.py`` rows), for each
variant: LLaDA2.0 as released, token shift, causal clean stream, both."""

import pytest

from tests.distributed.generate_workers import training_rows_worker
from tests.distributed.harness import run_ranks


@pytest.fixture(scope="module")
def differences():
    return run_ranks(training_rows_worker, 1, timeout=300)[0]


def test_decoding_logits_are_the_training_rows(differences):
    assert len(differences) == 8                        # 4 variants x (cache, no cache)
    for key, diff in differences.items():
        assert diff < 1e-4, key
