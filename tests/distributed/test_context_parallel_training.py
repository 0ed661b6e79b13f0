"""Training under context parallelism equals one rank (fp32, gloo): loss, loss tokens and gradient norm
of two optimizer steps within 1e-5 relative, for block diffusion with packed documents, the MDLM phase
(a BD curriculum's stable stage) and AR; CP 2 and 4, and CP 2 with TP 2 (sequence parallel), EP 2, PP 2
and DP 2 with the distributed optimizer (sharded over DP x CP)."""

import pytest

from tests.distributed import cp_training_workers as W
from tests.distributed.harness import run_ranks

BD = ["--dllm-objective", "bd", "--dllm-block-schedule", "stable:8@inf"]
MDLM = ["--dllm-objective", "bd", "--dllm-block-schedule", "stable:L@inf"]  # the stable (MDLM) phase
AR = ["--dllm-objective", "ar"]
CP2, CP4 = ["--context-parallel-size", "2"], ["--context-parallel-size", "4"]
REFERENCES = [("dense bd", "tiny-dense", BD), ("moe bd", "tiny-moe", BD), ("moe mdlm", "tiny-moe", MDLM),
              ("dense ar", "tiny-dense", AR)]
TWO = [("cp2 dense bd", "dense bd", CP2), ("cp2 moe bd", "moe bd", CP2), ("cp2 moe mdlm", "moe mdlm", CP2),
       ("cp2 dense ar", "dense ar", CP2)]
FOUR = [("cp4 moe bd", "moe bd", CP4),
        ("cp2 tp2 moe bd", "moe bd", CP2 + ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
        ("cp2 ep2 moe bd", "moe bd", CP2 + ["--expert-model-parallel-size", "2"]),
        ("cp2 pp2 dense bd", "dense bd", CP2 + ["--pipeline-model-parallel-size", "2"]),
        ("cp2 dp2 moe bd", "moe bd", CP2 + ["--use-distributed-optimizer"])]
STEPS = 2


def _cases(layouts):
    presets = {name: (preset, flags) for name, preset, flags in REFERENCES}
    return [(name, presets[ref][0], presets[ref][1] + extra) for name, ref, extra in layouts]


@pytest.fixture(scope="module")
def reference():
    return run_ranks(W.runs_worker, 1, args=(REFERENCES, STEPS), timeout=600)[0]


@pytest.fixture(scope="module")
def two_ranks():
    return run_ranks(W.runs_worker, 2, args=(_cases(TWO), STEPS), timeout=600)


@pytest.fixture(scope="module")
def four_ranks():
    return run_ranks(W.runs_worker, 4, args=(_cases(FOUR), STEPS), timeout=900)


def _check(results, reference, name, ref_name):
    want = reference[ref_name]
    assert want["layouts"] == (["mdlm"] * STEPS if "mdlm" in name else ["ar"] * STEPS if " ar" in name
                               else ["bd"] * STEPS)
    cp = int(name.split()[0][2:])
    for rank, per_rank in enumerate(results):
        got = per_rank[name]
        assert got["context_parallel"] == got["objective_cp"] == cp
        assert got["layouts"] == want["layouts"]
        assert got["num_tokens"] == want["num_tokens"], (rank, got["num_tokens"], want["num_tokens"])
        for key in ("loss_sum", "grad_norm"):
            for step, (a, b) in enumerate(zip(got[key], want[key])):
                assert abs(a - b) <= 1e-5 * abs(b), f"{name} rank {rank} step {step}: {key} {a} vs {b}"


@pytest.mark.parametrize("name, ref_name", [(n, r) for n, r, _ in TWO])
def test_two_rank_context_parallel(reference, two_ranks, name, ref_name):
    _check(two_ranks, reference, name, ref_name)


@pytest.mark.parametrize("name, ref_name", [(n, r) for n, r, _ in FOUR])
def test_four_rank_context_parallel(reference, four_ranks, name, ref_name):
    _check(four_ranks, reference, name, ref_name)
