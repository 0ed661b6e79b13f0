"""Write a converted model as a megatron_dllm checkpoint, streaming tensor by tensor.

Output layout (what ``megatron_dllm.pretrain --load`` reads; see ``checkpoint/layout.py``)::

    OUT/latest_checkpointed_iteration.txt     "0"
    OUT/iter_0000000/                         torch_dist files (.metadata, __0_*.distcp, metadata.json, common.pt)
    OUT/iter_0000000/dllm_meta.json           iteration 0, no optimizer, the run config (model, layout,
                                              mask token, objective, label shift) and the conversion record

``has_optimizer: false`` makes ``pretrain --load`` start at iteration 0 with a fresh optimizer and
scheduler. Peak memory is one output chunk plus the source pieces it is assembled from.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, List

import torch

from megatron_dllm.checkpoint.dcp_io import DcpWriter
from megatron_dllm.checkpoint.layout import META, TRACKER, checkpoint_path
from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.keymap import VOCAB_KEYS, per_layer_request
from megatron_dllm.convert.mask_token import MaskTokenPlan, fill_vocab_rows
from megatron_dllm.checkpoint.output import write_text
from megatron_dllm.convert.targets import TargetObject, TargetTensor

ITERATION = 0


def resolve_targets(source, targets: List[TargetTensor]) -> Dict[str, object]:
    """Source tensor for every target chunk's (per-layer) key, shapes checked; nothing is read."""
    found = {}
    for item in targets:
        key, shape, _, _ = per_layer_request(item.key, item.global_shape, item.offsets, item.sizes)
        if key in found:
            continue
        tensor = source.tensor(key, shape)
        got = tuple(tensor.shape)
        if key in VOCAB_KEYS:
            if got[1:] != shape[1:]:
                raise ConversionError(f"{key}: the checkpoint has shape {list(got)}, the configuration "
                                      f"needs [*, {shape[1]}]")
        elif got != shape:
            raise ConversionError(f"{key}: the checkpoint has shape {list(got)}, its configuration gives "
                                  f"{list(shape)}: the recorded config does not describe this checkpoint")
        found[key] = tensor
    return found


def produce(item: TargetTensor, resolved: Dict[str, object], plan: MaskTokenPlan) -> torch.Tensor:
    """The data of one output chunk, shape ``item.sizes``, in the source dtype."""
    key, _, offsets, sizes = per_layer_request(item.key, item.global_shape, item.offsets, item.sizes)
    tensor = resolved[key]
    if key in VOCAB_KEYS:
        if tuple(item.sizes) != tuple(item.global_shape):
            raise ConversionError(f"{key}: expected one chunk for the whole vocabulary")
        rows = min(tensor.shape[0], item.global_shape[0])
        if rows == item.global_shape[0] and not plan.init_rows:
            # nothing to pad or initialise: the source's box as it is (a mapped safetensors tensor is
            # written without a copy; the embedding is the largest tensor)
            return tensor.read_box((0,) * len(item.global_shape), tuple(item.global_shape))
        out = torch.empty(item.global_shape, dtype=tensor.dtype)
        tensor.read_box((0,) * len(out.shape), (rows,) + tuple(out.shape[1:]), out=out[:rows])
        return fill_vocab_rows(out, plan, rows)
    return tensor.read_box(offsets, sizes).view(item.sizes)


def write_checkpoint(
    out_root: str,
    source,
    plan: MaskTokenPlan,
    targets: List[TargetTensor],
    objects: List[TargetObject],
    meta: dict,
    on_tensor: Callable[[TargetTensor, int], None] = lambda item, nbytes: None,
    max_file_bytes: int = 8 << 30,
) -> dict:
    """Write the checkpoint into ``out_root`` (an empty directory); returns size statistics."""
    resolved = resolve_targets(source, targets)
    directory = checkpoint_path(out_root, ITERATION)
    writer = DcpWriter(directory, max_file_bytes=max_file_bytes)
    largest = 0
    for item in targets:
        data = produce(item, resolved, plan)
        writer.add_tensor(item.key, item.global_shape, item.offsets, data)
        nbytes = data.numel() * data.element_size()
        largest = max(largest, nbytes)
        del data
        on_tensor(item, nbytes)
    for obj in objects:
        writer.add_object(obj.unique_key, obj.value)
    writer.finish()
    write_text(os.path.join(directory, META), json.dumps(meta, indent=2, default=str))
    write_text(os.path.join(out_root, TRACKER), str(ITERATION))
    return {"tensors": len(targets), "bytes": writer.bytes_written, "largest_tensor_bytes": largest}
