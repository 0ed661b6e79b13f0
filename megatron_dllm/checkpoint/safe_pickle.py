"""Every unpickle of a checkpoint file, through a reader that refuses code before anything runs.

* ``torch.save`` files (``common.pt``, ShardedObject items, Megatron-LM's ``model_optim_rng.pt``):
  :func:`safe_torch_load`, which is ``torch.load(weights_only=True)``, optionally with ``mmap=True``.
  Megatron-LM's files also pickle an ``argparse.Namespace``, numpy RNG states and enums of Megatron's
  own modules, which ``weights_only`` refuses. With ``megatron_lm=True`` the file's globals are listed
  first (``torch.serialization.get_unsafe_globals_in_checkpoint`` reads the pickle and runs nothing);
  a file naming a function of a module that runs code (``os.system``, ``builtins.eval``, ...) is
  refused, and the rest are allowed through ``torch.serialization.safe_globals``: ``argparse.Namespace``
  and numpy's array rebuilders as themselves, every other class as an inert :class:`Opaque` that
  records its arguments. torch's weights-only unpickler still checks every opcode.
* DCP ``.metadata``: :func:`load_dcp_metadata`. It is a raw pickle of protocol 4, which torch's
  weights-only unpickler cannot read (no ``FRAME`` opcode), so a ``pickle.Unpickler`` whose
  ``find_class`` allows torch's DCP metadata records and torch values only reads it.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import importlib
import pickle
import zipfile
from typing import Any, Optional

import torch

from megatron_dllm.checkpoint.errors import CheckpointError


class Opaque:
    """Stand-in for an object of a class outside the allow-list (never executed, records its arguments)."""

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


# Modules whose functions run code or touch the system. A trainer never pickles one of them: a file
# that names one was crafted, so it is refused outright (a placeholder would be harmless too).
_REFUSED_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pickle",
                    "_pickle", "marshal", "socket", "ctypes", "code", "codeop", "pty", "webbrowser",
                    "multiprocessing", "io", "_io", "tempfile", "pathlib", "urllib", "http", "signal",
                    "threading", "_thread", "asyncio", "platform", "timeit", "pdb", "bdb", "cProfile",
                    "profile", "trace", "inspect", "operator", "functools", "builtins", "__builtin__",
                    "commands", "popen2", "glob", "zipimport", "pkgutil", "sysconfig", "site", "torch.hub",
                    "torch.storage", "torch.serialization", "torch._utils", "torch.jit")
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex,
                  "bytearray": bytearray, "range": range, "object": object, "int": int, "float": float,
                  "str": str, "bytes": bytes, "bool": bool, "tuple": tuple, "list": list, "dict": dict}
# numpy names whose objects are plain data (RNG states are uint32 arrays), allowed as themselves.
_NUMPY_DATA = ("ndarray", "dtype", "_reconstruct", "scalar")


def _refused(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _REFUSED_MODULES)


def _numpy_globals(name: str) -> list:
    module, attr = name.rsplit(".", 1)
    if attr not in _NUMPY_DATA and not (module == "numpy.dtypes" and attr.endswith("DType")):
        return []
    import numpy

    obj = getattr(importlib.import_module(module), attr)
    # A pickled dtype is rebuilt then given its state, which weights_only allows for listed classes only.
    return [obj] + ([type(numpy.dtype(c)) for c in numpy.typecodes["All"]] if attr in ("dtype", "_reconstruct") else [])


def _megatron_lm_globals(source, what: str) -> list:
    """What ``safe_globals`` must allow for a Megatron-LM file; refuses one crafted to run code."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{what} is corrupt or not a torch.save zip file ({exc.__class__.__name__}): "
                              "the checkpoint is incomplete or damaged (re-save it with a recent PyTorch)") from None
    finally:
        if hasattr(source, "seek"):
            source.seek(0)
    allowed: list = []
    for name in names:
        module, _, attr = name.rpartition(".")
        if name == "argparse.Namespace":
            allowed.append(argparse.Namespace)
        elif module in ("builtins", "__builtin__") and attr in _SAFE_BUILTINS:
            allowed.append(_SAFE_BUILTINS[attr])
        elif module.split(".")[0] == "numpy" and _numpy_globals(name):
            allowed.extend(_numpy_globals(name))
        elif _refused(module) or not module:
            raise CheckpointError(f"{what} references {name}, which checkpoints never hold: it was crafted to "
                                  "run code; refusing to load it (use a trusted checkpoint)")
        else:
            allowed.append((type(attr, (Opaque,), {"qualname": name}), name))
    return allowed


def safe_torch_load(source, what: str, mmap: bool = False, megatron_lm: bool = False):
    """``torch.load(weights_only=True)`` of a file (path) or buffer; a CheckpointError when refused.

    ``weights_only`` rebuilds tensors, containers and plain values only and refuses any other class
    before calling anything, so no code from the file runs. ``megatron_lm``: also allow what
    Megatron-LM pickles (see the module docstring). ``mmap``: map a file's storages instead of
    reading them (only the bytes a caller touches are read). ``what`` names the file in messages.
    """
    try:
        allowed = _megatron_lm_globals(source, what) if megatron_lm else []
        with torch.serialization.safe_globals(allowed):
            if mmap and isinstance(source, str):
                return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(source, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{what} is missing: the checkpoint is incomplete") from None
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines()
        detail = next((line.strip() for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
        detail = detail or "refused by torch.load(weights_only=True)"
        raise CheckpointError(f"{what} holds objects other than tensors and plain values ({detail}): "
                              "refusing to load it (use a trusted checkpoint)") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{what} is corrupt ({exc.__class__.__name__}): the checkpoint is incomplete "
                              "or damaged") from None


_TORCH_VALUE_TYPES = (torch.dtype, torch.layout, torch.memory_format)


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
            if name == "Size":
                return torch.Size
            value = getattr(torch, name, None)
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
