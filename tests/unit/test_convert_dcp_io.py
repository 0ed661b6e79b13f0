"""Streaming torch_dist writer and box reader, checked against torch.distributed.checkpoint itself."""

import os

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_dllm.checkpoint.dcp_io import DcpReader, DcpWriter
from megatron_dllm.convert.errors import ConversionError


def _write(path, max_file_bytes=1 << 30):
    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(12, 10, generator=gen), "b.experts": torch.randn(4, 6, 5, generator=gen),
               "c": torch.randn(7, generator=gen).to(torch.bfloat16)}
    writer = DcpWriter(path, max_file_bytes=max_file_bytes)
    a = tensors["a"]
    for r in (0, 6):  # two row chunks and two column chunks of "a"
        for c in (0, 4):
            cols = 4 if c == 0 else 6
            writer.add_tensor("a", a.shape, (r, c), a[r:r + 6, c:c + cols])
    for e in range(4):  # one chunk per expert, like Megatron's prepended expert axis
        writer.add_tensor("b.experts", (4, 6, 5), (e, 0, 0), tensors["b.experts"][e:e + 1])
    writer.add_tensor("c", (7,), (0,), tensors["c"])
    writer.add_object("layer._extra_state/shard_0_1", None)
    writer.finish()
    return tensors


def test_written_checkpoint_loads_with_torch_dcp(tmp_path):
    path = str(tmp_path / "ckpt")
    tensors = _write(path, max_file_bytes=300)
    assert len([f for f in os.listdir(path) if f.endswith(".distcp")]) > 1
    assert {"metadata.json", "common.pt", ".metadata"} <= set(os.listdir(path))
    loaded = {k: torch.empty_like(v) for k, v in tensors.items()}
    dcp.load(loaded, checkpoint_id=path, no_dist=True)
    for key in tensors:
        assert torch.equal(loaded[key], tensors[key]), key


def test_box_reads_match_slicing(tmp_path):
    path = str(tmp_path / "ckpt")
    tensors = _write(path)
    reader = DcpReader(path)
    a = tensors["a"]
    assert torch.equal(reader.read("a"), a)
    assert torch.equal(reader.read_box("a", (3, 2), (7, 6)), a[3:10, 2:8])  # spans all four chunks
    assert torch.equal(reader.read_box("b.experts", (2, 1, 0), (1, 4, 5)), tensors["b.experts"][2:3, 1:5])
    out = torch.zeros(12, 10)
    reader.read_box("a", (0, 0), (12, 10), out=out)
    assert torch.equal(out, a)
    assert reader.read_object("layer._extra_state/shard_0_1") == [None]
    with pytest.raises(ConversionError, match="outside global shape"):
        reader.read_box("a", (10, 0), (4, 10))


def test_missing_data_file_is_reported(tmp_path):
    path = str(tmp_path / "ckpt")
    _write(path, max_file_bytes=300)
    os.remove(os.path.join(path, "__0_1.distcp"))
    with pytest.raises(ConversionError, match="data file __0_1.distcp is missing"):
        DcpReader(path)


def test_corrupt_or_foreign_chunk_is_a_one_line_error(tmp_path):
    import pickle

    path = str(tmp_path / "ckpt")
    _write(path)
    metadata = pickle.load(open(os.path.join(path, ".metadata"), "rb"))  # our own file
    info = [v for k, v in metadata.storage_data.items() if k.fqn == "c"][0]
    with open(os.path.join(path, info.relative_path), "r+b") as handle:  # same length, bytes scrambled
        handle.seek(info.offset)
        handle.write(b"\xff" * info.length)
    reader = DcpReader(path)
    assert torch.equal(reader.read_box("a", (0, 0), (6, 4)), _write(str(tmp_path / "again"))["a"][:6, :4])
    with pytest.raises(ConversionError, match="a tensor item of its .distcp files is corrupt .*damaged"):
        reader.read("c")


def test_box_reads_touch_only_overlapping_chunks(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt")
    tensors = _write(path)
    reader = DcpReader(path)
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real(*a, **k))
    assert torch.equal(reader.read_box("a", (7, 5), (2, 3)), tensors["a"][7:9, 5:8])
    assert loads == [True]  # one chunk of four, loaded with weights_only
