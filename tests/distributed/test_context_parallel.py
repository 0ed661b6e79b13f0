"""The model under context parallelism equals one rank: logits of every rank's rows and summed gradients.

Tiny dense and tiny MoE (fp32, gloo), CP 2 and 4, block-diffusion ([xt ; x0]) with packed documents,
MDLM (bidirectional) and AR (causal via an explicit block-causal mask), balanced and zigzag splits.
"""

import pytest
import torch

from tests.distributed import cp_workers as W
from tests.distributed.harness import run_ranks

# The training-level test (test_context_parallel_training.py) covers more layouts; these check every
# rank's logits row by row, for both splits and the three masks.
CASES = [
    ("tiny-moe", "block_diffusion", True, 4, "balanced"),
    ("tiny-dense", "bidirectional", True, 2, "zigzag"),
    ("tiny-moe", "block_causal", False, 2, "balanced"),
]


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp")
    cache = {}

    def get(preset, kind, documents):
        key = (preset, kind, documents)
        if key not in cache:
            cache[key] = run_ranks(W.reference_worker, 1, args=(str(root), preset, kind, documents), timeout=300)[0]
        return root, cache[key]

    return get


@pytest.mark.parametrize("preset, kind, documents, cp, strategy", CASES)
def test_context_parallel_equals_one_rank(references, preset, kind, documents, cp, strategy):
    root, ref = references(preset, kind, documents)
    results = run_ranks(W.cp_worker, cp, args=(str(root), preset, kind, documents, strategy), timeout=300)
    assert sorted(r["cp_rank"] for r in results) == list(range(cp))
    seen = torch.cat([r["rows"][r["cp_rank"]] for r in results])
    assert torch.equal(seen.sort().values, torch.arange(ref["logits"].shape[1]))  # every row exactly once
    for r in results:
        rows = r["rows"][r["cp_rank"]]
        assert _relative(r["logits"], ref["logits"][:, rows]) <= 1e-5
    grads = results[0]["grads"]
    assert set(grads) == set(ref["grads"])
    worst = max(_relative(grads[name], ref["grads"][name]) for name in grads)
    assert worst <= 1e-5, worst
