"""Read ``torch.save`` files and DCP metadata safely and lazily.

Megatron-LM's legacy checkpoints (``model_optim_rng.pt``) pickle an ``argparse.Namespace``, enums,
numpy RNG states and optimizer objects next to the weights, which ``torch.load(weights_only=True)``
rejects; ``weights_only=False`` would run arbitrary code from the file. This module unpickles with
an allow-list instead (the same idea as ``weights_only``): tensors, containers, dtypes, sizes and
``argparse.Namespace`` are rebuilt; any other class becomes an inert :class:`Opaque` placeholder
that records its name and arguments and never executes anything. A pickle that names a function
of a module that runs code (``os``, ``subprocess``, ``builtins.eval``, ...) is refused outright.
DCP ``.metadata`` is read with an explicit allow-list of torch's metadata records
(:func:`load_dcp_metadata`); small files that hold only tensors and plain values (``common.pt``,
RNG states, ShardedObject items) go through ``torch.load(weights_only=True)`` (:func:`safe_torch_load`).

Tensors are not read while unpickling: each becomes a :class:`TensorRef` (file, byte offset, dtype,
shape, strides) whose :meth:`TensorRef.load` reads exactly the bytes it spans, optionally straight
into a caller's buffer. A converter can therefore walk a multi-GB file holding one tensor at a time.

Supported: the zip format of ``torch.save`` (PyTorch >= 1.6), also embedded at an offset inside a
larger file (each DCP ``*.distcp`` item is one). The pre-1.6 tar/pickle format is refused.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Optional, Tuple

import torch

from megatron_dllm.checkpoint.errors import CheckpointError

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header, 30 bytes
_LOCAL_HEADER_SIG = 0x04034B50


class Opaque:
    """Stand-in for an object of a class that is not on the allow-list (never executed)."""

    qualname = "?"
    args: tuple = ()
    kwargs: dict = {}
    state = None

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<opaque {self.qualname}{self.args!r}>"


# Modules whose functions run code or touch the system. A placeholder would never call them either;
# a pickle that names one is crafted, not saved by a trainer, so it is refused outright.
_REFUSED_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pickle",
                    "_pickle", "marshal", "socket", "ctypes", "code", "codeop", "pty", "webbrowser",
                    "multiprocessing", "io", "_io", "tempfile", "pathlib", "urllib", "http", "signal",
                    "threading", "_thread", "asyncio", "platform", "timeit", "pdb", "bdb", "cProfile",
                    "profile", "trace", "inspect", "operator", "functools", "builtins", "__builtin__",
                    "commands", "popen2", "glob", "zipimport", "pkgutil", "sysconfig", "site")


def _refused(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _REFUSED_MODULES)


def _opaque_class(module: str, name: str) -> type:
    if _refused(module):
        raise CheckpointError(f"the file references {module}.{name}, which checkpoints never hold: it "
                              "was crafted to run code; refusing to load it (use a trusted checkpoint)")
    return type(name, (Opaque,), {"qualname": f"{module}.{name}"})


def _safe_reconstructor(cls, base, state):
    # copyreg._reconstructor(cls, object, None) is how protocol 2 pickles plain objects.
    if isinstance(cls, type) and issubclass(cls, (Opaque, argparse.Namespace)):
        return cls.__new__(cls)
    raise CheckpointError(f"refusing to rebuild an object of {cls!r} from a pickle")


class _StorageRef:
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _StorageType:
    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _contiguous_strides(shape) -> Tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(int(size), 1)
    return tuple(reversed(strides))


class TensorRef:
    """A tensor stored in a file, not read yet.

    ``shape`` / ``stride`` / ``storage_offset`` are in elements of ``dtype``; ``data_offset`` is the
    absolute byte offset of its storage in ``path``. ``load()`` returns a fresh contiguous tensor of
    ``shape`` (or fills ``out``); ``load(rows=(a, b))`` reads rows ``a:b`` of dim 0 only.
    """

    __slots__ = ("path", "data_offset", "storage_numel", "dtype", "shape", "stride", "storage_offset")

    def __init__(self, path, data_offset, storage_numel, dtype, shape, stride, storage_offset):
        self.path = path
        self.data_offset = data_offset
        self.storage_numel = storage_numel
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)
        self.storage_offset = int(storage_offset)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    def sub(self, shape, element_offset: int) -> "TensorRef":
        """The contiguous block of ``shape`` starting ``element_offset`` elements into this tensor."""
        if not self.is_contiguous():
            raise ValueError("sub() needs a contiguous tensor")
        return TensorRef(self.path, self.data_offset, self.storage_numel, self.dtype, shape,
                         _contiguous_strides(shape), self.storage_offset + element_offset)

    def is_contiguous(self) -> bool:
        return self.numel <= 1 or all(
            st == cs for sz, st, cs in zip(self.shape, self.stride, _contiguous_strides(self.shape)) if sz > 1
        )

    def load(self, out: Optional[torch.Tensor] = None, rows: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Read the tensor (or rows ``[a, b)`` of dim 0) from disk; fills ``out`` when given."""
        shape = list(self.shape)
        first = 0
        if rows is not None:
            if not shape:
                raise ValueError("rows= needs a tensor with at least one dimension")
            first, last = rows
            if not 0 <= first <= last <= shape[0]:
                raise ValueError(f"rows {rows} outside dim 0 of size {shape[0]}")
            shape[0] = last - first
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if self.is_contiguous():
            row_elems = _contiguous_strides(self.shape)[0] if self.shape else 1
            start = self.storage_offset + first * row_elems
            count = 1
            for s in shape:
                count *= s
            target = out
            if target is None or not target.is_contiguous() or target.dtype != self.dtype:
                target = torch.empty(shape, dtype=self.dtype)
            if tuple(target.shape) != tuple(shape):
                raise ValueError(f"out has shape {tuple(target.shape)}, expected {tuple(shape)}")
            _read_into(self.path, self.data_offset + start * itemsize, target, count * itemsize)
            if out is not None and target is not out:
                out.copy_(target)
                return out
            return target
        # Strided (rare in checkpoints): read the span the view covers, then gather.
        span = 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride) if s > 0)
        flat = torch.empty(span, dtype=self.dtype)
        _read_into(self.path, self.data_offset + self.storage_offset * itemsize, flat, span * itemsize)
        view = flat.as_strided(self.shape, self.stride)
        if rows is not None:
            view = view[rows[0]:rows[1]]
        if out is not None:
            out.copy_(view)
            return out
        return view.contiguous()

    def __repr__(self):
        return f"TensorRef({self.dtype}, {list(self.shape)})"


def _read_into(path: str, offset: int, tensor: torch.Tensor, nbytes: int) -> None:
    """Fill the contiguous ``tensor`` with ``nbytes`` bytes of ``path`` from ``offset`` (no copy)."""
    if nbytes == 0:
        return
    view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B")
    if len(view) != nbytes:
        raise ValueError(f"buffer holds {len(view)} bytes, {nbytes} requested")
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        done = 0
        while done < nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise CheckpointError(f"{path} is truncated (wanted {nbytes} bytes at offset {offset})")
            done += got


class _FileView(io.RawIOBase):
    """Read-only window ``[base, base + length)`` of a file, seekable (for zipfile)."""

    def __init__(self, path: str, base: int, length: int):
        self._handle = open(path, "rb")
        self._base, self._length, self._pos = base, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._length + offset
        self._pos = max(0, min(self._pos, self._length))
        return self._pos

    def readinto(self, buffer):
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        self._handle.seek(self._base + self._pos)
        got = self._handle.readinto(memoryview(buffer)[:want])
        self._pos += got
        return got

    def close(self):
        self._handle.close()
        super().close()


def _dtype_of_storage_type(name: str) -> torch.dtype:
    from torch.storage import _get_dtype_from_pickle_storage_type

    if name == "UntypedStorage":
        return torch.uint8
    return _get_dtype_from_pickle_storage_type(name)


_TORCH_VALUE_TYPES = (torch.dtype, torch.layout, torch.memory_format)
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex,
                  "bytearray": bytearray, "range": range, "object": object, "int": int, "float": float,
                  "str": str, "bytes": bytes, "bool": bool, "tuple": tuple, "list": list, "dict": dict}


class _CheckpointUnpickler(pickle.Unpickler):
    """Allow-list unpickler for the ``data.pkl`` of a torch.save zip; tensors become TensorRefs."""

    def __init__(self, data: bytes, resolve_storage):
        super().__init__(io.BytesIO(data))
        self._resolve_storage = resolve_storage

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r} in a torch.save file")
        _, storage_type, key, _location, numel = pid
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else torch.uint8
        return _StorageRef(str(key), dtype, int(numel))

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *_rest):
        if not isinstance(storage, _StorageRef):
            raise CheckpointError("malformed tensor record in a torch.save file")
        return self._resolve_storage(storage, storage_offset, size, stride)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_rest):
        ref = self._rebuild_tensor(storage, 0, size, stride)
        # v3 stores an untyped (uint8) storage and the real dtype separately.
        itemsize = torch.empty((), dtype=dtype).element_size()
        ref.dtype = dtype
        ref.storage_offset = int(storage_offset)
        ref.storage_numel = storage.numel // itemsize
        return ref

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils":
            if name == "_rebuild_tensor_v2":
                return self._rebuild_tensor
            if name == "_rebuild_tensor_v3":
                return self._rebuild_tensor_v3
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return lambda data, *args: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, new_type, args, state: func(*args)
        if module == "torch":
            if name == "Size":
                return torch.Size
            if name == "device":
                return torch.device
            if name.endswith("Storage"):
                return _StorageType(_dtype_of_storage_type(name))
            value = getattr(torch, name, None)
            if isinstance(value, _TORCH_VALUE_TYPES):
                return value
        if (module, name) == ("torch.serialization", "_get_layout"):
            return torch.serialization._get_layout
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if (module, name) == ("copyreg", "_reconstructor"):
            return _safe_reconstructor
        return _opaque_class(module, name)


def _member_data_offset(view: _FileView, info: zipfile.ZipInfo) -> int:
    view.seek(info.header_offset)
    header = view.read(_LOCAL_HEADER.size)
    fields = _LOCAL_HEADER.unpack(header)
    if fields[0] != _LOCAL_HEADER_SIG:
        raise CheckpointError("corrupt zip record in a torch.save file")
    name_len, extra_len = fields[9], fields[10]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def load_lazy(path: str, base: int = 0, length: Optional[int] = None) -> Any:
    """Unpickle the torch.save zip at ``path`` (or at ``[base, base+length)`` inside it), lazily.

    Returns the saved object with every tensor replaced by a :class:`TensorRef`; nothing but the
    pickle itself is read. Raises CheckpointError for a file that is not a torch.save zip.
    """
    if length is None:
        length = os.path.getsize(path) - base
    view = _FileView(path, base, length)
    try:
        try:
            archive = zipfile.ZipFile(view)
        except zipfile.BadZipFile as exc:
            raise CheckpointError(
                f"{path} is not a torch.save zip file (saved by PyTorch < 1.6, or corrupt): re-save it "
                "with a recent PyTorch"
            ) from exc
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl record, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).decode() != "little":
            raise CheckpointError(f"{path} was saved on a big-endian machine: not supported")
        infos = {info.filename: info for info in archive.infolist()}

        def resolve(storage: _StorageRef, storage_offset, size, stride) -> TensorRef:
            info = infos.get(f"{prefix}data/{storage.key}")
            if info is None:
                raise CheckpointError(f"{path}: storage record {storage.key} is missing")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: compressed storage records are not supported")
            offset = base + _member_data_offset(view, info)
            return TensorRef(path, offset, storage.numel, storage.dtype, size, stride, storage_offset)

        try:
            return _CheckpointUnpickler(archive.read(pkl[0]), resolve).load()
        except CheckpointError as exc:
            if str(exc).startswith("the file references"):
                where = path if base == 0 else f"{path} at offset {base}"
                raise CheckpointError(str(exc).replace("the file", where, 1)) from None
            raise
    finally:
        view.close()


def load_tensor(path: str, base: int, length: int) -> TensorRef:
    """The single tensor saved with ``torch.save(tensor)`` at ``[base, base+length)`` of ``path``."""
    obj = load_lazy(path, base, length)
    if not isinstance(obj, TensorRef):
        raise CheckpointError(f"{path} at offset {base}: expected a tensor record, found {type(obj).__name__}")
    return obj


def materialize(obj: Any) -> Any:
    """Replace every TensorRef inside ``obj`` (dicts, lists, tuples) by its loaded tensor (small files)."""
    if isinstance(obj, TensorRef):
        return obj.load()
    if isinstance(obj, dict):
        return type(obj)((k, materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialize(v) for v in obj)
    return obj


def _dcp_metadata_classes() -> dict:
    """The classes a DCP ``.metadata`` pickle may name: torch's own metadata records and enums."""
    from torch.distributed.checkpoint import filesystem, metadata, planner

    names = {
        metadata: ("Metadata", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                   "BytesStorageMetadata", "ChunkStorageMetadata", "MetadataIndex", "_MEM_FORMAT_ENCODING"),
        filesystem: ("_StorageInfo", "_StoragePrefix"),
        planner: ("SavePlan", "TensorWriteData", "WriteItem", "WriteItemType", "LoadItemType"),
    }
    return {(mod.__name__, n): getattr(mod, n) for mod, ns in names.items() for n in ns if hasattr(mod, n)}


class _MetadataUnpickler(pickle.Unpickler):
    """Allow-list unpickler for DCP ``.metadata`` files: DCP's own records and torch values only."""

    _classes: Optional[dict] = None

    def find_class(self, module: str, name: str) -> Any:
        if _MetadataUnpickler._classes is None:
            _MetadataUnpickler._classes = _dcp_metadata_classes()
        if (module, name) in self._classes:
            return self._classes[(module, name)]
        if module == "torch":
            value = getattr(torch, name, None)
            if name == "Size":
                return torch.Size
            if isinstance(value, _TORCH_VALUE_TYPES):
                return value
        if (module, name) == ("torch.serialization", "_get_layout"):
            return torch.serialization._get_layout
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        raise CheckpointError(f"unexpected object {module}.{name} in checkpoint metadata: refusing to load it "
                              "(the file was not written by torch.distributed.checkpoint; use a trusted checkpoint)")


def load_dcp_metadata(path: str):
    """The ``torch.distributed.checkpoint`` Metadata pickled in ``path`` (allow-listed classes only)."""
    try:
        with open(path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError, IndexError,
            KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc.__class__.__name__}): the checkpoint is incomplete "
                              "or damaged") from None
    if type(metadata).__name__ != "Metadata" or not hasattr(metadata, "state_dict_metadata"):
        raise CheckpointError(f"{path} holds a {type(metadata).__name__}, not DCP metadata: the checkpoint is damaged")
    return metadata


def safe_torch_load(source, what: str, mmap: bool = False):
    """``torch.load(weights_only=True)`` of a file (path) or buffer; a CheckpointError when refused.

    ``weights_only`` rebuilds tensors, containers and plain values only and refuses any other class
    before calling anything, so no code from the file runs. ``what`` names the file in the message.
    """
    try:
        if mmap and isinstance(source, str):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{what} is missing: the checkpoint is incomplete") from None
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        detail = detail or "refused by torch.load(weights_only=True)"
        raise CheckpointError(f"{what} holds objects other than tensors and plain values ({detail}): "
                              "refusing to load it (use a trusted checkpoint)") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{what} is corrupt ({exc.__class__.__name__}): the checkpoint is incomplete "
                              "or damaged") from None
