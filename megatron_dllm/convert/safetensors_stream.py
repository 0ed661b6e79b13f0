"""Write safetensors files one tensor at a time (the header is known from shapes before any data).

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes
of JSON ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`` (padded with
spaces to a multiple of 8), then the raw little-endian tensor bytes in header order. ``save_file``
would need every tensor of a shard in memory at once; this writer holds one.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}

Entry = Tuple[str, Tuple[int, ...], torch.dtype]


def entry_bytes(entry: Entry) -> int:
    _, shape, dtype = entry
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


def plan_shards(entries: Sequence[Entry], max_shard_bytes: int) -> List[List[Entry]]:
    """Consecutive groups of entries, each under ``max_shard_bytes`` (a larger tensor gets its own)."""
    shards, current, size = [], [], 0
    for entry in entries:
        nbytes = entry_bytes(entry)
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    if current:
        shards.append(current)
    return shards


def write_safetensors(path: str, entries: Sequence[Entry], produce: Callable[[str], torch.Tensor],
                      metadata: Optional[Dict[str, str]] = None, on_tensor=lambda name, nbytes: None) -> int:
    """Write ``entries`` to ``path``, asking ``produce(name)`` for each tensor in turn; returns the bytes."""
    header: Dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = entry_bytes((name, shape, dtype))
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for name, shape, dtype in entries:
            tensor = produce(name)
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"{name}: produced {tuple(tensor.shape)} {tensor.dtype}, header says {shape} {dtype}")
            flat = tensor.contiguous().reshape(-1)
            handle.write(memoryview(flat.view(torch.uint8).numpy()))
            on_tensor(name, flat.numel() * flat.element_size())
            del tensor, flat
        handle.flush()
        os.fsync(handle.fileno())
    return 8 + len(blob) + offset
