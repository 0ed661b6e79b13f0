"""Check a torch_dist checkpoint folder before anything in it is loaded.

Every pickle of the folder is read with a reader that refuses code (``.metadata`` with an allow-list
of torch's metadata records, ``common.pt`` and each ShardedObject item with
``torch.load(weights_only=True)``, for checkpoints written by Megatron-LM, whose items hold
``argparse.Namespace`` / numpy RNG states / enums, with the allowances of ``safe_pickle``), and
every data file named by the metadata must exist and be long enough for the bytes recorded in it. A failure is one CheckpointError line that names the file.
Tensor items are checked by length only: torch's DCP reader already loads them with ``weights_only``.
"""

from __future__ import annotations

import io
import os

from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.safe_pickle import load_dcp_metadata, safe_torch_load

COMMON = "common.pt"


def check_data_files(directory: str, metadata) -> None:
    """Every ``*.distcp`` file that ``metadata`` names exists and holds the bytes it records."""
    needed = {}
    for info in metadata.storage_data.values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{directory}: data file {name} is missing: the checkpoint is incomplete "
                                  "(resume from an earlier iteration or copy the file again)")
        size = os.path.getsize(path)
        if size < end:
            raise CheckpointError(f"{directory}: data file {name} is truncated ({size} of {end} bytes): the "
                                  "checkpoint is incomplete (resume from an earlier iteration or copy it again)")


def item_bytes(directory: str, info) -> bytes:
    """The bytes of one DCP item (its ``_StorageInfo``: file, offset, length) of ``directory``."""
    with open(os.path.join(directory, info.relative_path), "rb") as handle:
        handle.seek(int(info.offset))
        return handle.read(int(info.length))


def check_object_items(directory: str, metadata, megatron_lm: bool = False) -> None:
    """Every ShardedObject item (a pickled value inside a ``.distcp`` file) loads without running code.

    ``megatron_lm``: with the allowances for Megatron-LM's items, else plain ``torch.load(weights_only=True)``.
    """
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    for key, md in metadata.state_dict_metadata.items():
        if not isinstance(md, BytesStorageMetadata):
            continue
        info = metadata.storage_data.get(MetadataIndex(key))
        if info is None:
            raise CheckpointError(f"{directory}: no data recorded for {key}: the checkpoint is incomplete")
        safe_torch_load(io.BytesIO(item_bytes(directory, info)), f"{directory}: item {key} of {info.relative_path}", megatron_lm=megatron_lm)


def check_torch_dist(directory: str, megatron_lm: bool = False):
    """Refuse an unsafe or incomplete torch_dist folder; returns its DCP metadata when it is sound.

    ``megatron_lm``: allow what Megatron-LM pickles (converter sources; see ``safe_pickle``), else plain
    ``torch.load(weights_only=True)`` (checkpoints that this package loads into a model).
    """
    meta_file = os.path.join(directory, ".metadata")
    if not os.path.isfile(meta_file):
        raise CheckpointError(f"{directory} has no .metadata file: not a torch_dist checkpoint, or an incomplete one")
    metadata = load_dcp_metadata(meta_file)
    check_data_files(directory, metadata)
    check_object_items(directory, metadata, megatron_lm)
    common = os.path.join(directory, COMMON)
    if os.path.isfile(common):
        safe_torch_load(common, common, megatron_lm=megatron_lm)
    return metadata
