"""The restricted, lazy torch.save reader: same tensors as torch.load, never runs code from a file."""

import argparse
import collections
import enum
import os
import pickle

import pytest
import torch

from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.checkpoint.safe_pickle import Opaque, TensorRef, load_dcp_metadata, load_lazy, materialize


class _Kind(enum.Enum):
    A = 1


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_lazy_load_equals_torch_load(tmp_path):
    base = torch.randn(6, 8)
    payload = {
        "model": collections.OrderedDict(
            w=torch.randn(5, 7), view=base[1:4, 2:6], transposed=torch.randn(4, 3).t(),
            bf16=torch.randn(9, dtype=torch.float32).to(torch.bfloat16), param=torch.nn.Parameter(torch.ones(3)),
            shared_a=base, shared_b=base[2], extra=None),
        "args": argparse.Namespace(num_layers=4, params_dtype=torch.bfloat16, kind=_Kind.A, freq=[0, 1, 1]),
        "iteration": 12, "checkpoint_version": 3.0, "blob": b"\x00\x01",
    }
    path = str(tmp_path / "ckpt.pt")
    torch.save(payload, path)
    lazy = load_lazy(path)
    assert all(isinstance(v, TensorRef) for k, v in lazy["model"].items() if k != "extra")
    expected = torch.load(path, weights_only=False)
    for key, ref in lazy["model"].items():
        if key == "extra":
            assert ref is None
            continue
        got = ref.load()
        assert got.dtype == expected["model"][key].dtype and torch.equal(got, expected["model"][key].detach()), key
    assert lazy["args"].num_layers == 4 and lazy["args"].params_dtype is torch.bfloat16
    assert lazy["args"].freq == [0, 1, 1]
    assert isinstance(lazy["args"].kind, Opaque) and lazy["args"].kind.args == (1,)
    assert lazy["iteration"] == 12 and lazy["blob"] == b"\x00\x01"
    assert torch.equal(materialize(lazy["model"])["w"], payload["model"]["w"])


def test_partial_reads_and_out_buffer(tmp_path):
    t = torch.arange(60, dtype=torch.float32).view(10, 6)
    path = str(tmp_path / "t.pt")
    torch.save({"t": t}, path)
    ref = load_lazy(path)["t"]
    assert torch.equal(ref.load(rows=(3, 7)), t[3:7])
    out = torch.empty(10, 6)
    assert ref.load(out=out) is out and torch.equal(out, t)
    assert torch.equal(ref.sub((2, 6), 12).load(), t[2:4])


def test_never_executes_code_from_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {"w": torch.ones(2)}, "payload": _Evil(str(marker))}, path)
    with pytest.raises(ConversionError, match=r"evil.pt references posix.system, which checkpoints never hold"):
        load_lazy(path)
    assert not marker.exists()
    # a class of another module (e.g. a Megatron enum) is still an inert placeholder
    torch.save({"kind": _Kind.A}, path)
    lazy = load_lazy(path)
    assert isinstance(lazy["kind"], Opaque) and lazy["kind"].qualname.endswith("_Kind")


def test_dcp_metadata_reader_refuses_foreign_globals(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(ConversionError, match="unexpected object posix.system in checkpoint metadata"):
        load_dcp_metadata(str(path))
    assert not marker.exists()


def test_not_a_zip_is_a_one_line_error(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ConversionError, match="is not a torch.save zip file"):
        load_lazy(str(path))
