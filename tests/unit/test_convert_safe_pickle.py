"""Safe loads of checkpoint pickles: same values as an unrestricted torch.load, never runs code."""

import argparse
import collections
import enum
import io
import os
import pickle
import random

import numpy as np
import pytest
import torch

from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.safe_pickle import Opaque, load_dcp_metadata, safe_torch_load
from megatron_dllm.convert.legacy_file import LegacyFile


class _Kind(enum.Enum):
    A = 1


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _megatron_lm_payload():
    base = torch.randn(6, 8)
    return {
        "model": collections.OrderedDict(
            w=torch.randn(5, 7), view=base[1:4, 2:6], transposed=torch.randn(4, 3).t(),
            bf16=torch.randn(9).to(torch.bfloat16), param=torch.nn.Parameter(torch.ones(3)),
            shared_a=base, shared_b=base[2], extra=None),
        "args": argparse.Namespace(num_layers=4, params_dtype=torch.bfloat16, kind=_Kind.A, freq=[0, 1, 1]),
        "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                       "torch_rng_state": torch.get_rng_state()}],
        "iteration": 12, "checkpoint_version": 3.0, "blob": b"\x00\x01",
    }


@pytest.mark.parametrize("mmap", [False, True])
def test_megatron_lm_file_loads_like_an_unrestricted_load(tmp_path, mmap):
    payload = _megatron_lm_payload()
    path = str(tmp_path / "model_optim_rng.pt")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        safe_torch_load(path, "f")  # plain weights_only refuses the Namespace / numpy / enum
    got = safe_torch_load(path, "f", mmap=mmap, megatron_lm=True)
    expected = torch.load(path, weights_only=False)
    for key, value in expected["model"].items():
        if value is None:
            assert got["model"][key] is None
            continue
        assert got["model"][key].dtype == value.dtype and torch.equal(got["model"][key], value.detach()), key
    assert got["args"].num_layers == 4 and got["args"].params_dtype is torch.bfloat16
    assert got["args"].freq == [0, 1, 1]
    assert isinstance(got["args"].kind, Opaque) and got["args"].kind.args == (1,)
    assert got["args"].kind.qualname.endswith("_Kind")
    state, want = got["rng_state"][0]["np_rng_state"], payload["rng_state"][0]["np_rng_state"]
    assert state[0] == want[0] and np.array_equal(state[1], want[1]) and state[2:] == want[2:]
    assert got["rng_state"][0]["random_rng_state"] == payload["rng_state"][0]["random_rng_state"]
    assert got["iteration"] == 12 and got["blob"] == b"\x00\x01"


def test_legacy_tensor_reads_rows_blocks_and_into_buffers(tmp_path):
    t = torch.arange(60, dtype=torch.float32).view(10, 6)
    path = str(tmp_path / "t.pt")
    torch.save({"model": {"t": t}}, path)
    ref = dict(LegacyFile(path).tensors(("model",)))["t"]
    assert ref.shape == (10, 6) and ref.dtype == torch.float32
    assert torch.equal(ref.load(rows=(3, 7)), t[3:7])
    out = torch.empty(10, 6)
    assert ref.load(out=out) is out and torch.equal(out, t)
    assert torch.equal(ref.sub((2, 6), 12).load(), t[2:4])
    with pytest.raises(ValueError, match="outside dim 0"):
        ref.load(rows=(8, 11))


def test_legacy_file_remaps_after_its_budget(tmp_path):
    t = torch.randn(64, 64)  # 16 KiB
    path = str(tmp_path / "t.pt")
    torch.save({"model": {"t": t}}, path)
    handle = LegacyFile(path, budget=40 << 10)
    ref = dict(handle.tensors(("model",)))["t"]
    for _ in range(6):  # 96 KiB copied: the mapping is dropped twice (after 48 and 96 KiB)
        assert torch.equal(ref.load(), t)
    assert handle.maps == 2 and handle._state is None
    assert torch.equal(ref.load(rows=(1, 2)), t[1:2]) and handle.maps == 3


def test_never_executes_code_from_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {"w": torch.ones(2)}, "payload": _Evil(str(marker))}, path)
    for megatron_lm in (False, True):
        with pytest.raises(CheckpointError, match=r"evil.pt (references posix.system|holds objects other)"):
            safe_torch_load(path, path, mmap=True, megatron_lm=megatron_lm)
    with pytest.raises(CheckpointError, match=r"references posix.system, which checkpoints never hold"):
        LegacyFile(path).state()
    buffer = io.BytesIO()
    torch.save([_Evil(str(marker))], buffer)
    buffer.seek(0)
    with pytest.raises(CheckpointError, match=r"item references posix.system"):
        safe_torch_load(buffer, "item", megatron_lm=True)
    assert not marker.exists()


def test_dcp_metadata_reader_refuses_foreign_globals(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(CheckpointError, match="unexpected object posix.system in checkpoint metadata"):
        load_dcp_metadata(str(path))
    assert not marker.exists()


def test_not_a_zip_is_a_one_line_error(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="is corrupt"):
        safe_torch_load(str(path), str(path), megatron_lm=True)
