"""TP / PP / EP layouts give the single-rank loss and gradient norm (fp32, within 1e-5 relative).

Tiny dense and tiny MoE (sigmoid router, expert bias, group-limited top-k, shared expert; alltoall
dispatcher) models, identical weights (a dist_checkpointing save of the reference, resharded on load)
and an identical global batch in the block-diffusion layout. Two optimizer steps (distributed Adam)
are taken, so the second loss also checks that the update is the same under every layout.
"""

import pytest

from tests.distributed import equivalence_workers as W
from tests.distributed.harness import run_ranks

TWO_RANKS = [
    ("dense", "tp2", dict(tensor_model_parallel_size=2)),
    ("dense", "pp2", dict(pipeline_model_parallel_size=2)),
    ("dense", "dp2", dict()),
    ("moe", "tp2", dict(tensor_model_parallel_size=2, sequence_parallel=True)),
    ("moe", "pp2", dict(pipeline_model_parallel_size=2)),
    ("moe", "ep2", dict(expert_model_parallel_size=2)),
]
FOUR_RANKS = [
    ("moe", "tp2xep2", dict(tensor_model_parallel_size=2, expert_model_parallel_size=2, sequence_parallel=True)),
    ("dense", "tp2xpp2", dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)),
    ("moe", "tp2xpp2", dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, sequence_parallel=True)),
    ("moe", "ep2xpp2", dict(expert_model_parallel_size=2, pipeline_model_parallel_size=2)),
    ("moe", "ep4_etp1", dict(expert_model_parallel_size=4, expert_tensor_parallel_size=1)),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("equivalence")
    ref = run_ranks(W.reference_worker, 1, args=(str(root),), timeout=300)[0]
    return root, ref


@pytest.fixture(scope="module")
def two_rank_results(reference):
    root, _ = reference
    return run_ranks(W.layouts_worker, 2, args=(str(root), TWO_RANKS), timeout=400)


@pytest.fixture(scope="module")
def four_rank_results(reference):
    root, _ = reference
    return run_ranks(W.layouts_worker, 4, args=(str(root), FOUR_RANKS), timeout=500)


def _check(results, ref, kind, name):
    expected = ref[kind]
    for rank, per_rank in enumerate(results):
        got = per_rank[(kind, name)]
        assert got["updated"]
        for key in ("loss", "grad_norm", "loss_step2"):
            rel = abs(got[key] - expected[key]) / abs(expected[key])
            assert rel <= 1e-5, f"{kind}/{name} rank {rank}: {key} {got[key]} vs {expected[key]}"


def test_reference_is_sane(reference):
    _, ref = reference
    for kind in ("dense", "moe"):
        # an untrained model over a 256-token vocabulary starts near ln(256) = 5.545
        assert 5.3 < ref[kind]["loss"] < 5.8
        assert ref[kind]["loss_step2"] < ref[kind]["loss"]
        assert ref[kind]["grad_norm"] > 0


@pytest.mark.parametrize("kind,name", [(k, n) for k, n, _ in TWO_RANKS])
def test_two_rank_layouts(reference, two_rank_results, kind, name):
    _check(two_rank_results, reference[1], kind, name)


@pytest.mark.parametrize("kind,name", [(k, n) for k, n, _ in FOUR_RANKS])
def test_four_rank_layouts(reference, four_rank_results, kind, name):
    _check(four_rank_results, reference[1], kind, name)
