"""Crafted checkpoints for the reliability tests: each hides an ``os.system("touch MARKER")`` in one pickle.

``poison(src, dst, kind, marker)`` copies the checkpoint (save folder) ``src`` to ``dst`` and plants
the payload in one place:

    metadata   iter_*/.metadata                    (read by torch's DCP reader with a plain pickle.load)
    common     iter_*/common.pt                    (read by Megatron-Core's common strategy)
    item       a ShardedObject item in a .distcp   (read by DCP's planner with weights_only=False)
    tensor     the stored chunk of a weight tensor in a .distcp (read by DCP's file reader)
    legacy     a Megatron-LM legacy checkpoint: iter_0000001/mp_rank_00/model_optim_rng.pt

A loader that unpickles any of them naively creates ``marker``.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil

import torch

KINDS = ("metadata", "common", "item", "tensor", "legacy")


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _latest(root: str) -> str:
    with open(os.path.join(root, "latest_checkpointed_iteration.txt")) as handle:
        return os.path.join(root, f"iter_{int(handle.read().strip()):07d}")


def _poison_item(directory: str, marker: str, tensor: bool = False) -> None:
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    with open(os.path.join(directory, ".metadata"), "rb") as handle:
        metadata = pickle.load(handle)  # our own, trusted file
    if tensor:  # the first chunk of the word embedding, which every loader reads
        key = "embedding.word_embeddings.weight"
        index = MetadataIndex(key, metadata.state_dict_metadata[key].chunks[0].offsets)
    else:
        keys = [k for k, md in metadata.state_dict_metadata.items() if isinstance(md, BytesStorageMetadata)]
        assert keys, f"{directory} has no ShardedObject item to replace"
        index = MetadataIndex(keys[0])
    info = metadata.storage_data[index]
    buffer = io.BytesIO()
    torch.save([Payload(marker)], buffer)
    target = os.path.join(directory, info.relative_path)
    offset = os.path.getsize(target)
    with open(target, "ab") as handle:
        handle.write(buffer.getvalue())
    metadata.storage_data[index] = type(info)(info.relative_path, offset, len(buffer.getvalue()))
    with open(os.path.join(directory, ".metadata"), "wb") as handle:
        pickle.dump(metadata, handle)


def poison(src: str, dst: str, kind: str, marker: str) -> str:
    """Copy ``src`` to ``dst`` with the payload planted as ``kind``; returns ``dst``."""
    if kind == "legacy":
        rank_dir = os.path.join(dst, "iter_0000001", "mp_rank_00")
        os.makedirs(rank_dir)
        torch.save({"args": Payload(marker), "iteration": 1, "checkpoint_version": 3.0,
                    "model": {"embedding.word_embeddings.weight": torch.zeros(4, 2)}},
                   os.path.join(rank_dir, "model_optim_rng.pt"))
        with open(os.path.join(dst, "latest_checkpointed_iteration.txt"), "w") as handle:
            handle.write("1")
        return dst
    shutil.copytree(src, dst)
    directory = _latest(dst)
    if kind == "metadata":
        with open(os.path.join(directory, ".metadata"), "wb") as handle:
            pickle.dump(Payload(marker), handle)
    elif kind == "common":
        torch.save({"optimizer": Payload(marker)}, os.path.join(directory, "common.pt"))
    elif kind in ("item", "tensor"):
        _poison_item(directory, marker, tensor=kind == "tensor")
    else:
        raise ValueError(kind)
    return dst
