"""Megatron-Core ``torch_dist`` checkpoints, read and written one tensor at a time.

A ``torch_dist`` checkpoint directory is a PyTorch DCP (``torch.distributed.checkpoint``) checkpoint
plus two small Megatron files::

    .metadata        pickled DCP Metadata: for each global key its global shape, dtype and chunks
                     (offsets, sizes), and where each chunk's bytes are (file, offset, length)
    __R_F.distcp     the chunks, each a ``torch.save(tensor)`` zip (objects: a ``torch.save([obj])``)
    metadata.json    {"sharded_backend": "torch_dist", ...}       (Megatron-Core's format marker)
    common.pt        the non-sharded part of the state dict       ({} for a model-only checkpoint)

:class:`DcpReader` reads any box of a global tensor, touching only the chunks that overlap it and
reading only their bytes. :class:`DcpWriter` appends chunks to data files as they are produced and
writes ``.metadata`` at the end, so a checkpoint of any size is written holding one chunk in memory
(``torch.distributed.checkpoint.save`` plans with every tensor present, and its file writer keeps a
reference to each tensor until its file is complete). The output is what ``dist_checkpointing.save``
writes: ``dist_checkpointing.load`` and ``torch.distributed.checkpoint`` read it under any layout.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.integrity import check_data_files
from megatron_dllm.checkpoint.safe_pickle import TensorRef, load_dcp_metadata, load_lazy, load_tensor

def _dcp():
    """torch.distributed.checkpoint's metadata classes (imported on first use: the import costs ~1 s)."""
    from torch.distributed.checkpoint import filesystem, metadata

    return metadata, filesystem._StorageInfo


MCORE_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                  "common_backend": "torch", "common_backend_version": 1}


@dataclass
class Chunk:
    """One stored piece of a global tensor: ``offsets`` / ``sizes`` per dim, bytes in ``file``."""

    offsets: Tuple[int, ...]
    sizes: Tuple[int, ...]
    file: str
    byte_offset: int
    byte_length: int
    _ref: Optional[TensorRef] = None

    def ref(self) -> TensorRef:
        if self._ref is None:
            self._ref = load_tensor(self.file, self.byte_offset, self.byte_length)
        return self._ref


@dataclass
class TensorInfo:
    shape: Tuple[int, ...]
    dtype: torch.dtype
    chunks: List[Chunk]


class DcpReader:
    """Random access to the tensors of a torch_dist checkpoint directory (read-only)."""

    def __init__(self, path: str):
        self.path = path
        meta_file = os.path.join(path, ".metadata")
        if not os.path.isfile(meta_file):
            raise CheckpointError(f"{path} has no .metadata file: not a torch_dist checkpoint (or incomplete)")
        metadata = load_dcp_metadata(meta_file)
        where: Dict[Tuple[str, Optional[Tuple[int, ...]]], object] = {}
        for index, info in metadata.storage_data.items():
            offset = tuple(index.offset) if index.offset is not None else None
            where[(index.fqn, offset)] = info
        self.tensors: Dict[str, TensorInfo] = {}
        self.objects: Dict[str, object] = {}
        bytes_type = _dcp()[0].BytesStorageMetadata
        for key, md in metadata.state_dict_metadata.items():
            if isinstance(md, bytes_type):
                self.objects[key] = where.get((key, None))
                continue
            chunks = []
            for chunk in md.chunks:
                offsets = tuple(int(o) for o in chunk.offsets)
                info = where.get((key, offsets))
                if info is None:
                    raise CheckpointError(f"{path}: no data recorded for {key} at {offsets}: the checkpoint is incomplete")
                chunks.append(Chunk(offsets, tuple(int(s) for s in chunk.sizes),
                                    os.path.join(path, info.relative_path), info.offset, info.length))
            self.tensors[key] = TensorInfo(tuple(int(s) for s in md.size), md.properties.dtype, chunks)
        check_data_files(path, metadata)  # every data file present and long enough

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def read(self, key: str) -> torch.Tensor:
        """The whole global tensor ``key``."""
        info = self.tensors[key]
        return self.read_box(key, (0,) * len(info.shape), info.shape)

    def read_box(self, key: str, offsets: Sequence[int], sizes: Sequence[int],
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Elements ``[offsets, offsets + sizes)`` of global tensor ``key``, shape ``sizes``.

        Reads only the overlapping chunks, and of those only the rows needed. Fills ``out`` when given.
        """
        info = self.tensors.get(key)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor {key!r}")
        offsets, sizes = tuple(offsets), tuple(sizes)
        if len(offsets) != len(info.shape) or any(
                o < 0 or o + s > g for o, s, g in zip(offsets, sizes, info.shape)):
            raise CheckpointError(f"{key}: box {offsets}+{sizes} outside global shape {info.shape}")
        for chunk in info.chunks:  # fast path: the box is exactly one stored chunk
            if chunk.offsets == offsets and chunk.sizes == sizes:
                return chunk.ref().load(out=out)
        result = out if out is not None else torch.empty(sizes, dtype=info.dtype)
        covered = 0
        for chunk in info.chunks:
            lo = [max(o, c) for o, c in zip(offsets, chunk.offsets)]
            hi = [min(o + s, c + cs) for o, s, c, cs in zip(offsets, sizes, chunk.offsets, chunk.sizes)]
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            local = [slice(l - c, h - c) for l, h, c in zip(lo, hi, chunk.offsets)]
            target = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, offsets))
            full_rows = all(sl.start == 0 and sl.stop == cs for sl, cs in zip(local[1:], chunk.sizes[1:]))
            if local and full_rows:
                part = chunk.ref().load(rows=(local[0].start, local[0].stop))
            else:
                part = chunk.ref().load()[tuple(local)]
            result[target].copy_(part)
            del part
            n = 1
            for l, h in zip(lo, hi):
                n *= h - l
            covered += n
        want = 1
        for s in sizes:
            want *= s
        if covered < want:
            raise CheckpointError(f"{self.path}: {key} box {offsets}+{sizes} is not fully stored: the checkpoint is incomplete")
        return result

    def read_object(self, key: str):
        """A ShardedObject's value (the list mcore saved, loaded with the restricted unpickler)."""
        info = self.objects.get(key)
        if info is None:
            raise CheckpointError(f"{self.path}: no object {key!r}")
        return load_lazy(os.path.join(self.path, info.relative_path), info.offset, info.length)


class DcpWriter:
    """Write a torch_dist checkpoint chunk by chunk (one rank, no process group).

    ``add_tensor`` appends one chunk and forgets it; ``add_object`` one ShardedObject; ``finish``
    writes ``.metadata``, ``metadata.json`` and ``common.pt``. A new data file starts when the
    current one exceeds ``max_file_bytes``.
    """

    def __init__(self, path: str, max_file_bytes: int = 8 << 30):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.max_file_bytes = max_file_bytes
        self._file_index = -1
        self._handle = None
        self._files: List[str] = []
        self._md, self._storage_info = _dcp()
        self._state: Dict[str, object] = {}
        self._storage: Dict[object, object] = {}
        self.bytes_written = 0
        self._next_file()

    def _next_file(self) -> None:
        if self._handle is not None:
            self._close_file()
        self._file_index += 1
        name = f"__0_{self._file_index}.distcp"
        self._files.append(name)
        self._handle = open(os.path.join(self.path, name), "wb")

    def _close_file(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None

    def _append(self, write):
        if self._handle.tell() >= self.max_file_bytes:
            self._next_file()
        start = self._handle.tell()
        write(self._handle)
        length = self._handle.tell() - start
        self.bytes_written += length
        return self._storage_info(self._files[-1], start, length)

    def add_tensor(self, key: str, global_shape: Sequence[int], offsets: Sequence[int], tensor: torch.Tensor) -> None:
        """Append ``tensor`` as the chunk of global tensor ``key`` at ``offsets``."""
        global_shape = torch.Size(global_shape)
        offsets = torch.Size(offsets)
        if len(offsets) != len(global_shape) or tensor.dim() != len(global_shape):
            raise ValueError(f"{key}: chunk rank {tensor.dim()} vs global shape {tuple(global_shape)}")
        if any(o + s > g for o, s, g in zip(offsets, tensor.shape, global_shape)):
            raise ValueError(f"{key}: chunk {tuple(offsets)}+{tuple(tensor.shape)} outside {tuple(global_shape)}")
        if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.contiguous().clone()  # torch.save writes the whole storage
        md = self._state.get(key)
        if md is None:
            md = self._md.TensorStorageMetadata(self._md.TensorProperties(dtype=tensor.dtype), global_shape, [])
            self._state[key] = md
        elif md.size != global_shape or md.properties.dtype != tensor.dtype:
            raise ValueError(f"{key}: chunks disagree on the global shape or dtype")
        info = self._append(lambda handle: torch.save(tensor.detach().cpu(), handle))
        md.chunks.append(self._md.ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(tensor.shape)))
        self._storage[self._md.MetadataIndex(key, offsets, len(md.chunks) - 1)] = info

    def add_object(self, unique_key: str, value) -> None:
        """Append a ShardedObject (``unique_key`` = ``key/shard_...``) as Megatron-Core stores it."""
        buffer = io.BytesIO()
        torch.save([value], buffer)
        self._state[unique_key] = self._md.BytesStorageMetadata()
        self._storage[self._md.MetadataIndex(unique_key)] = self._append(lambda handle: handle.write(buffer.getbuffer()))

    def finish(self) -> None:
        """Close the data files and write the metadata files (the checkpoint is complete after this)."""
        self._close_file()
        metadata = self._md.Metadata(
            state_dict_metadata=self._state, storage_data=self._storage,
            storage_meta=self._md.StorageMeta(checkpoint_id=self.path, save_id=str(uuid.uuid4())),
            version="1.0.0",
        )
        _write_file(os.path.join(self.path, ".metadata"), pickle.dumps(metadata))
        _write_file(os.path.join(self.path, "metadata.json"), json.dumps(MCORE_METADATA).encode())
        common = io.BytesIO()
        torch.save({}, common)
        _write_file(os.path.join(self.path, "common.pt"), common.getvalue())


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
