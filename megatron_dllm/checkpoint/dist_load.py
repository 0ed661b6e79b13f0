"""``dist_checkpointing.load`` whose every unpickle refuses code (Megatron-Core 0.16 load strategies).

Megatron-Core's torch_dist strategy reads ``.metadata`` with a plain ``pickle.load`` (torch's
``FileSystemReader``) and ShardedObject items with ``torch.load(weights_only=False)`` (torch's
``DefaultLoadPlanner``); its common strategy reads ``common.pt`` with ``torch.load``'s default. The
strategies here differ in those three reads only: ``.metadata`` through the allow-list reader,
items and ``common.pt`` through ``torch.load(weights_only=True)``. ``load`` also runs
:func:`~megatron_dllm.checkpoint.integrity.check_torch_dist` first, so a crafted or truncated
folder is refused with one line before any tensor is read.

Version-sensitive: :meth:`SafeTorchDistLoadStrategy.load` follows
``megatron.core.dist_checkpointing.strategies.torch.TorchDistLoadShardedStrategy.load`` of 0.16.1.
"""

from __future__ import annotations

import io
import os

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME, TorchCommonLoadStrategy
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from megatron_dllm.checkpoint.dcp_io import dcp_load_error, safe_file_system_reader
from megatron_dllm.checkpoint.integrity import check_torch_dist
from megatron_dllm.checkpoint.safe_pickle import safe_torch_load


class SafeLoadPlanner(mcore_torch.MCoreLoadPlanner):
    """Megatron-Core's load planner with ShardedObject items read by ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = safe_torch_load(value, f"checkpoint item {read_item.dest_index.fqn}")
        # Hand the parent a buffer of the value already rebuilt safely (it places it in the state dict).
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)


class SafeTorchDistLoadStrategy(mcore_torch.TorchDistLoadShardedStrategy):
    """torch_dist loading with the safe reader and planner (see the module docstring)."""

    def load(self, sharded_state_dict, checkpoint_dir):
        flexible = [t for t in nested_values(sharded_state_dict)
                    if isinstance(t, ShardedTensor) and not t.allow_shape_mismatch]
        mismatch = {t.key: t for t in nested_values(sharded_state_dict)
                    if isinstance(t, ShardedTensor) and t.allow_shape_mismatch}
        original = sharded_state_dict
        sharded_state_dict, flat_mapping, rename_mapping = (
            mcore_torch._replace_state_dict_keys_with_sharded_keys(sharded_state_dict))
        pyt_state_dict = mcore_torch.mcore_to_pyt_state_dict(sharded_state_dict, True)
        reader = safe_file_system_reader(checkpoint_dir)
        dcp.load_state_dict(pyt_state_dict, reader, planner=SafeLoadPlanner(
            shapes_validation_sharded_tensors=flexible, allow_shape_mismatch_sharded_tensors=mismatch))
        self.cached_global_metadata = reader.read_metadata()
        state = {k: mcore_torch._unwrap_pyt_sharded_tensor(v) for k, v in pyt_state_dict.items()}
        state = mcore_torch._replace_sharded_keys_with_state_dict_keys(state, flat_mapping, rename_mapping)
        mcore_torch._restore_dict_types(state, original)
        return state


class SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    """``common.pt`` through ``torch.load(weights_only=True)``."""

    def load_common(self, checkpoint_dir):
        path = os.path.join(str(checkpoint_dir), COMMON_STATE_FNAME)
        return safe_torch_load(path, path)


def safe_dist_load(sharded_state_dict, directory: str):
    """``dist_checkpointing.load`` of ``directory`` after :func:`check_torch_dist`; nothing in it runs."""
    check_torch_dist(directory)
    try:
        return dist_checkpointing.load(sharded_state_dict, directory,
                                       sharded_strategy=SafeTorchDistLoadStrategy(),
                                       common_strategy=SafeCommonLoadStrategy())
    except (Exception, CheckpointException) as exc:  # DCP wraps what its reader raised
        error = dcp_load_error(directory, exc)
        if error is None:
            raise
        raise error from None
