"""The memory planner against what training actually allocates (tiny models, CPU, fp32 path).

Ground truth: the real model, Megatron DDP and our optimizer built as ``train/setup.py`` builds them,
after one optimizer step: the bytes of every storage held by parameters, DDP gradient buffers and the
optimizer (main parameters, Adam states). The planner's parameter + gradient + optimizer prediction
must be within 10% of it on every rank (it is exact up to Adam's step counters). Activations: the
peak of the tensors autograd holds for backward during the step, against the estimate without the
loss-time logits (which autograd does not hold); within 10% (routing imbalance moves EP ranks a few %).
"""

import pytest

from tests.distributed.harness import run_ranks
from tests.distributed.memory_workers import plan_and_measure_worker

FOUR_LAYERS = ["--num-layers", "4"]
TIED = ["--no-untie-embeddings-and-output-weights"]
DIST_OPT = ["--use-distributed-optimizer"]

SINGLE_RANK = [
    ("tiny-dense", [], ["mdlm", "bd"]),
    ("tiny-moe", [], ["mdlm", "bd"]),
    ("tiny-moe", DIST_OPT, ["mdlm"]),
]
TWO_RANKS = [
    ("tiny-moe", DIST_OPT, ["mdlm"]),                                                     # DP 2
    ("tiny-moe", DIST_OPT + ["--expert-model-parallel-size", "2"], ["mdlm"]),             # EP 2
    ("tiny-moe", ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                  "--vocab-size", "130"], ["bd"]),                                        # TP 2, padded vocab
    ("tiny-dense", FOUR_LAYERS + TIED + DIST_OPT + ["--pipeline-model-parallel-size", "2"], ["mdlm", "bd"]),
    ("tiny-dense", FOUR_LAYERS + TIED + DIST_OPT + ["--pipeline-model-parallel-size", "2",
                                                     "--virtual-pipeline-model-parallel-size", "2"], ["mdlm"]),
]


def _report(rank, result):
    planned, allocated = result["planned"], result["allocated"]
    p_total, a_total = sum(planned.values()), sum(allocated.values())
    print(f"rank {rank} stage {result['stage']} {result['case']}: planned {p_total} B "
          f"(params {planned['params']}, grads {planned['grads']}, optimizer {planned['optimizer']}), "
          f"allocated {a_total} B (params {allocated['params']}, grads {allocated['grads']}, "
          f"optimizer {allocated['optimizer']}), ratio {p_total / a_total:.4f}")
    for layout, act in result["activations"].items():
        print(f"    activations {layout}: planned {act['planned']} B, saved-for-backward peak "
              f"{act['saved_peak']} B, ratio {act['planned'] / act['saved_peak']:.3f}")


def _check(results):
    for rank, per_rank in enumerate(results):
        for result in per_rank:
            _report(rank, result)
            planned, allocated = result["planned"], result["allocated"]
            assert sum(planned.values()) == pytest.approx(sum(allocated.values()), rel=0.10), result
            for kind in planned:
                assert planned[kind] == pytest.approx(allocated[kind], rel=0.10), (kind, result)
            for layout, act in result["activations"].items():
                assert act["planned"] == pytest.approx(act["saved_peak"], rel=0.10), (layout, result)


def test_plan_matches_allocation_single_rank():
    _check(run_ranks(plan_and_measure_worker, 1, args=(SINGLE_RANK,), timeout=300))


def test_plan_matches_allocation_two_ranks():
    _check(run_ranks(plan_and_measure_worker, 2, args=(TWO_RANKS,), timeout=300))
