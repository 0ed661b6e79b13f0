"""Layout-independent weight initialisation: a weight is a function of (seed, its global name) only.

Megatron-Core draws initial weights from RNG streams whose position depends on which layers a rank
builds, so the same seed gives different models under different pipeline (and expert) layouts. This
re-initialises every weight matrix from its entry in the model's sharded state dict, which names the
global tensor and where this rank's shard sits in it: each row of the global tensor (all leading
indices, the last axis being the row) gets its own generator seeded by (seed, name, row). A rank
generates only the rows it holds and slices the columns it holds, so TP, PP and EP layouts start
from the same model, and a bigger layout costs no more per rank than the weights it owns.

Distributions follow Megatron's defaults: N(0, std) for weights, N(0, std / sqrt(2 * num_layers))
for the output projections of attention and MLP (``linear_proj``, ``linear_fc2``); norms, biases
and buffers keep their constructor values.
"""

from __future__ import annotations

import math
import zlib

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

from megatron_dllm.diffusion.seeding import mix_seed

STREAM_INIT = 4


def _is_initialised_weight(key: str) -> bool:
    name = key.rsplit(".", 1)[-1]
    if not name.startswith("weight"):
        return False
    return not any(part in key for part in ("norm", "layer_norm", "expert_bias"))


def _std_for(key: str, std: float, num_layers: int) -> float:
    if ".linear_proj." in key or ".linear_fc2." in key:
        return std / math.sqrt(2.0 * num_layers)
    return std


@torch.no_grad()
def _fill(tensor: ShardedTensor, seed: int, std: float) -> None:
    # Global axes = ``prepend_axis_num`` prepended axes (this shard sits at one index of each,
    # e.g. its layer or expert) followed by the axes of the local tensor.
    name_hash = zlib.crc32(tensor.key.encode())
    prepend = tensor.prepend_axis_num
    offset = tensor.global_offset
    lead_local = tensor.local_shape[:-1]
    lead_global = tensor.global_shape[:-1]
    cols_global = tensor.global_shape[-1]
    col0, ncols = offset[-1], tensor.local_shape[-1]
    rows = tensor.data.view(-1, ncols)
    for flat, local_index in enumerate(_indices(lead_local)):
        global_index = list(offset[:prepend]) + [offset[prepend + j] + i for j, i in enumerate(local_index)]
        row = 0
        for g, size in zip(global_index, lead_global):
            row = row * size + g
        gen = torch.Generator().manual_seed(mix_seed(seed, name_hash, row, stream=STREAM_INIT))
        values = torch.randn(cols_global, generator=gen, dtype=torch.float32) * std
        rows[flat].copy_(values[col0:col0 + ncols].to(rows.dtype))


def _indices(shape):
    if not shape:
        yield ()
        return
    total = 1
    for s in shape:
        total *= s
    for flat in range(total):
        index, rest = [], flat
        for s in reversed(shape):
            index.append(rest % s)
            rest //= s
        yield tuple(reversed(index))


def reinitialize(model, seed: int, std: float, num_layers: int) -> int:
    """Re-initialise every weight of ``model`` (one chunk) layout-independently; returns the count."""
    sharded = model.sharded_state_dict()
    apply_factories(sharded)
    count = 0
    for value in nested_values(sharded):
        if isinstance(value, ShardedTensor) and value.data is not None and _is_initialised_weight(value.key):
            if value.data.is_floating_point():
                _fill(value, seed, _std_for(value.key, std, num_layers))
                count += 1
    return count
