"""Block-wise decoding: the KV cache changes nothing; the threshold sets tokens per forward."""

import pytest

from tests.distributed.generate_workers import decoding_worker
from tests.distributed.harness import run_ranks


@pytest.fixture(scope="module")
def decoded():
    return run_ranks(decoding_worker, 1, timeout=300)[0]


def test_kv_cache_gives_the_tokens_of_no_cache_decoding(decoded):
    """Every variant (token shift, causal clean stream): cached == uncached, and fusing the commit
    of a finished block into the next block's first step changes no token and saves a forward."""
    variants = decoded["variants"]
    assert len(variants) == 4
    for rows in variants.values():
        for runs in rows:
            fused, separate, uncached = runs[(True, True)], runs[(True, False)], runs[(False, True)]
            assert fused[0] == separate[0] == uncached[0]
            assert len(fused[0]) == 20
            assert fused[1] == separate[1] == uncached[1]        # the same decoding steps
            assert fused[2] == 0 and uncached[2] == 0
            assert separate[2] >= 2  # prefill (when the prompt has a whole block) + one commit per block
    default = [r[(True, True)][0] for r in variants[(False, "block_causal")]]
    for key in ((True, "block_causal"), (False, "causal")):
        assert [r[(True, True)][0] for r in variants[key]] != default  # the variants decode differently


def test_threshold_one_decodes_one_token_per_forward(decoded):
    tpf, passes, n = decoded["tpf"][1.0]
    assert tpf == 1.0 and passes == 24 and n == 24


def test_threshold_zero_decodes_a_block_per_forward(decoded):
    tpf, passes, n = decoded["tpf"][0.0]
    assert passes == 3 and tpf == 8.0 and n == 24


def test_ar_greedy_decoding_with_kv_cache_matches_full_recompute(decoded):
    for cached, uncached, passes in decoded["ar"]:
        assert cached == uncached
        assert len(cached) == 12 and passes == 12  # one token per forward, no EOS given
