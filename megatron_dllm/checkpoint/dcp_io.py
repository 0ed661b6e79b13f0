"""Megatron-Core ``torch_dist`` checkpoints, read and written one tensor at a time.

A ``torch_dist`` checkpoint directory is a PyTorch DCP (``torch.distributed.checkpoint``) checkpoint
plus two small Megatron files::

    .metadata        pickled DCP Metadata: for each global key its global shape, dtype and chunks
                     (offsets, sizes), and where each chunk's bytes are (file, offset, length)
    __R_F.distcp     the chunks, each a ``torch.save(tensor)`` zip (objects: a ``torch.save([obj])``)
    metadata.json    {"sharded_backend": "torch_dist", ...}       (Megatron-Core's format marker)
    common.pt        the non-sharded part of the state dict       ({} for a model-only checkpoint)

:class:`DcpReader` reads any box of a global tensor with ``torch.distributed.checkpoint.load`` (one
process, no process group): DCP's resharding plan picks the chunks that overlap the box and its file
reader loads each with ``torch.load(weights_only=True)``, one chunk in memory at a time. ``.metadata``
goes through the allow-list reader of ``safe_pickle`` (:class:`SafeFileSystemReader`).
:class:`DcpWriter` appends chunks to data files as they are produced and writes ``.metadata`` at the
end, so a checkpoint of any size is written holding one chunk in memory
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
import warnings
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.integrity import check_data_files, item_bytes
from megatron_dllm.checkpoint.safe_pickle import load_dcp_metadata, safe_torch_load


def _dcp():
    """torch.distributed.checkpoint's metadata classes (imported on first use: the import costs ~1 s)."""
    from torch.distributed.checkpoint import filesystem, metadata

    return metadata, filesystem._StorageInfo


MCORE_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                  "common_backend": "torch", "common_backend_version": 1}


def safe_file_system_reader(path: str):
    """torch's DCP ``FileSystemReader`` of ``path`` with ``.metadata`` read through the allow-list (cached).

    Its ``read_data`` loads tensor items with ``torch.load(weights_only=True)``; byte items go to the
    planner's ``load_bytes`` (ours use :func:`safe_torch_load`).
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def __init__(self, checkpoint_path) -> None:
            super().__init__(path=checkpoint_path)
            self._metadata = None

        def read_metadata(self, *args, **kwargs):
            if self._metadata is None:
                metadata = load_dcp_metadata(os.path.join(str(self.path), ".metadata"))
                if getattr(metadata, "storage_meta", None) is None:
                    metadata.storage_meta = StorageMeta()
                metadata.storage_meta.load_id = self.load_id
                self._metadata = metadata
            return self._metadata

    return SafeFileSystemReader(path)


def box_reads(key: str, shape, chunks, offsets, sizes):
    """DCP's resharding plan: the ``ReadItem``s that fill box ``offsets``/``sizes`` of a tensor stored
    as ``chunks`` [(offsets, sizes)]; ``storage_index.index`` is the chunk's position in ``chunks``."""
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, TensorProperties,
                                                       TensorStorageMetadata)
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    stored = TensorStorageMetadata(TensorProperties(), torch.Size(shape),
                                   [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in chunks])
    box = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
    return create_read_items_for_chunk_list(key, stored, [box])


def narrow(tensor: torch.Tensor, offsets, lengths) -> torch.Tensor:
    """The view ``tensor[offsets : offsets + lengths]`` (per dimension)."""
    for dim, (start, length) in enumerate(zip(offsets, lengths)):
        tensor = tensor.narrow(dim, start, length)
    return tensor


def _box_planner(key: str, offsets, sizes, out: torch.Tensor):
    """A DCP ``LoadPlanner`` that fills ``out`` with box ``offsets``/``sizes`` of global tensor ``key``."""
    from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner

    class BoxPlanner(LoadPlanner):
        covered = 0

        def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
            self.metadata = metadata

        def create_local_plan(self):
            md = self.metadata.state_dict_metadata[key]
            return LoadPlan(box_reads(key, md.size, [(c.offsets, c.sizes) for c in md.chunks], offsets, sizes))

        def create_global_plan(self, global_plan):
            return global_plan

        def finish_plan(self, central_plan):
            return central_plan

        def load_bytes(self, read_item, value):
            raise CheckpointError(f"{key} is a tensor, not an object")

        def resolve_tensor(self, read_item):
            return narrow(out, read_item.dest_offsets, read_item.lengths)

        def commit_tensor(self, read_item, tensor):
            self.covered += tensor.numel()

    return BoxPlanner()


def dcp_failure(exc: BaseException) -> BaseException:
    """The exception behind a DCP error (DCP gathers each rank's failure as (exception, traceback))."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        return first[0] if isinstance(first, tuple) else first
    return exc


def dcp_load_error(directory: str, exc: BaseException) -> Optional[CheckpointError]:
    """The one-line error for a DCP load of ``directory`` that failed with ``exc`` (None: not the files' fault)."""
    cause = dcp_failure(exc)
    text = str(cause)
    if isinstance(cause, pickle.UnpicklingError) and ("GLOBAL" in text or "Can only build" in text):
        return CheckpointError(f"{directory}: a tensor item of its .distcp files holds objects other than a "
                               "tensor: refusing to load it (use a trusted checkpoint)")
    if isinstance(cause, (EOFError, zipfile.BadZipFile, pickle.UnpicklingError)) or (
            isinstance(cause, RuntimeError) and "PytorchStreamReader" in text):
        return CheckpointError(f"{directory}: a tensor item of its .distcp files is corrupt "
                               f"({cause.__class__.__name__}): the checkpoint is damaged (resume from an earlier "
                               "iteration or copy it again)")
    return None


@dataclass
class Chunk:
    """One stored piece of a global tensor: ``offsets`` / ``sizes`` per dim."""

    offsets: Tuple[int, ...]
    sizes: Tuple[int, ...]


@dataclass
class TensorInfo:
    shape: Tuple[int, ...]
    dtype: torch.dtype
    chunks: List[Chunk]


class DcpReader:
    """Random access to the tensors of a torch_dist checkpoint directory (read-only)."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(os.path.join(path, ".metadata")):
            raise CheckpointError(f"{path} has no .metadata file: not a torch_dist checkpoint (or incomplete)")
        self._reader = safe_file_system_reader(path)
        metadata = self._reader.read_metadata()
        self._storage = metadata.storage_data
        self.tensors: Dict[str, TensorInfo] = {}
        self.objects: Dict[str, object] = {}
        bytes_type = _dcp()[0].BytesStorageMetadata
        for key, md in metadata.state_dict_metadata.items():
            if isinstance(md, bytes_type):
                self.objects[key] = md
                continue
            chunks = [Chunk(tuple(int(o) for o in c.offsets), tuple(int(s) for s in c.sizes)) for c in md.chunks]
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

        Reads only the chunks that overlap the box (each whole, one at a time). Fills ``out`` when given.
        """
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.api import CheckpointException

        info = self.tensors.get(key)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor {key!r}")
        offsets, sizes = tuple(int(o) for o in offsets), tuple(int(s) for s in sizes)
        if len(offsets) != len(info.shape) or len(sizes) != len(info.shape) or any(
                o < 0 or o + s > g for o, s, g in zip(offsets, sizes, info.shape)):
            raise CheckpointError(f"{key}: box {offsets}+{sizes} outside global shape {info.shape}")
        result = out if out is not None else torch.empty(sizes, dtype=info.dtype)
        if tuple(result.shape) != sizes:
            raise ValueError(f"out has shape {tuple(result.shape)}, expected {sizes}")
        planner = _box_planner(key, offsets, sizes, result)
        try:
            with warnings.catch_warnings():  # one process on purpose: no "assuming single process" line
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                load({key: result}, storage_reader=self._reader, planner=planner, no_dist=True)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as exc:  # DCP wraps what its reader raised
            error = dcp_load_error(self.path, exc)
            if error is None:
                raise
            raise error from None
        if planner.covered != result.numel():
            raise CheckpointError(f"{self.path}: {key} box {offsets}+{sizes} is not fully stored: the checkpoint is incomplete")
        return result

    def read_object(self, key: str):
        """A ShardedObject's value (the list Megatron-Core saved), read with ``safe_torch_load``."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        info = self._storage.get(MetadataIndex(key)) if key in self.objects else None
        if info is None:
            raise CheckpointError(f"{self.path}: no object {key!r}")
        return safe_torch_load(io.BytesIO(item_bytes(self.path, info)), f"{self.path}: item {key}", megatron_lm=True)


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
