"""--overlap-grad-reduce and --overlap-param-gather on two gloo ranks (DP 2, distributed optimizer):
the same losses, gradient norms, validation losses and saved weights as without overlap.

With --overlap-param-gather the weights of an update are all-gathered by the next forward's pre-hooks,
so an evaluation or a save right after an update would see stale shards without ``synced_params``:
evaluations and saves fall between updates here, and the saved weights are compared tensor by tensor.
"""

import os

import pytest
import torch

from megatron_dllm.checkpoint.dcp_io import DcpReader
from tests.e2e.cli import metrics, pretrain

pytestmark = pytest.mark.slow
BASE = ["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--seq-length", "64", "--micro-batch-size", "2",
        "--global-batch-size", "8", "--lr", "3e-3", "--train-iters", "6", "--eval-interval", "3", "--eval-iters", "1",
        "--save-interval", "5", "--dllm-objective", "bd", "--dllm-block-schedule", "stable:8@inf",
        "--use-distributed-optimizer", "--log-interval", "1"]
VARIANTS = {"none": [], "grad": ["--overlap-grad-reduce"],
            "grad_and_param": ["--overlap-grad-reduce", "--overlap-param-gather"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, flags in VARIANTS.items():
        root = tmp_path_factory.mktemp(name)
        pretrain(BASE + flags + ["--save", str(root / "ckpt"), "--metrics-path", str(root / "m.jsonl")], nproc=2)
        out[name] = root
    return out


def _weights(root, iteration):
    reader = DcpReader(os.path.join(root, "ckpt", f"iter_{iteration:07d}"))
    return {k: reader.read(k) for k in reader.tensors if not k.startswith("optimizer")}


@pytest.mark.parametrize("variant", ["grad", "grad_and_param"])
def test_overlap_trains_and_saves_as_without(runs, variant):
    base, got = runs["none"], runs[variant]
    for kind, keys in (("train", ("loss", "grad_norm")), ("valid", ("nelbo",))):
        want = [[r["iteration"]] + [r[k] for k in keys] for r in metrics(str(base / "m.jsonl"), kind)]
        have = [[r["iteration"]] + [r[k] for k in keys] for r in metrics(str(got / "m.jsonl"), kind)]
        assert have == want and len(want) == (6 if kind == "train" else 2), kind
    for iteration in (5, 6):  # 5: saved right after an update; 6: after the evaluation at 6
        ref, new = _weights(base, iteration), _weights(got, iteration)
        assert ref.keys() == new.keys() and len(ref) > 10
        assert all(torch.equal(ref[k], new[k]) for k in ref), iteration
