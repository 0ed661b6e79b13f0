"""The streaming safetensors writer produces files the safetensors library reads back exactly."""

import struct

import torch
from safetensors import safe_open

from megatron_dllm.convert.safetensors_stream import plan_shards, write_safetensors


def test_stream_write_reads_back(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(4)}
    entries = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    path = str(tmp_path / "x.safetensors")
    asked = []

    def produce(name):
        asked.append(name)
        return tensors[name]
    size = write_safetensors(path, entries, produce)
    assert asked == ["a", "b", "c"]  # one at a time, in header order
    with open(path, "rb") as handle:
        header_len = struct.unpack("<Q", handle.read(8))[0]
    assert header_len % 8 == 0 and size == (tmp_path / "x.safetensors").stat().st_size
    with safe_open(path, "pt") as handle:
        for name, value in tensors.items():
            assert torch.equal(handle.get_tensor(name), value), name


def test_shard_plan():
    f32 = torch.float32
    entries = [("a", (10,), f32), ("b", (10,), f32), ("big", (100,), f32), ("c", (5,), f32)]
    shards = plan_shards(entries, max_shard_bytes=80)
    assert [[e[0] for e in s] for s in shards] == [["a", "b"], ["big"], ["c"]]
