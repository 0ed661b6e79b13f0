"""Average checkpoints tensor by tensor (top-k checkpoint merging, METHOD.md 6.3; WSM).

Each output chunk is the float64 mean of the same box of every input, cast back to the tensor's dtype;
inputs may have been saved under different parallel layouts (boxes are read from any chunking). One
chunk per input is in memory at a time. The result is a weights-only checkpoint in our layout
(``iter_0000000`` + ``dllm_meta.json`` + tracker), which ``megatron_dllm.pretrain --load`` starts
from at iteration 0 with a fresh optimizer. Optimizer state is not merged.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List, Optional

import torch

from megatron_dllm.checkpoint import layout
from megatron_dllm.checkpoint.dcp_io import DcpReader, DcpWriter
from megatron_dllm.checkpoint.integrity import check_torch_dist
from megatron_dllm.checkpoint.output import atomic_directory, check_output, write_text
from megatron_dllm.convert.errors import ConversionError


def resolve_checkpoint(path: str) -> str:
    """An ``iter_*`` directory, or a save directory (its latest checkpoint)."""
    if os.path.isfile(os.path.join(path, layout.META)):
        return path
    if os.path.isdir(path):
        iteration = layout.latest_iteration(path)
        if iteration is not None:
            return layout.checkpoint_path(path, iteration)
    raise ConversionError(f"{path}: not a megatron_dllm checkpoint (no {layout.META}, no tracker file)")


def top_k_by_validation(save_dir: str, k: int, metrics_path: Optional[str] = None) -> List[str]:
    """The ``k`` checkpoints of ``save_dir`` with the lowest validation NELBO logged at their iteration."""
    metrics_path = metrics_path or os.path.join(save_dir, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        raise ConversionError(f"{metrics_path} not found: pass --metrics-path or the checkpoints explicitly")
    scores = {}
    with open(metrics_path) as handle:
        for lineno, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                raise ConversionError(f"{metrics_path}:{lineno} is not a JSON record: pass --metrics-path "
                                      "of an intact metrics.jsonl, or the checkpoints with --inputs") from None
            if record.get("kind") == "valid" and "nelbo" in record:
                scores[int(record["iteration"])] = float(record["nelbo"])
    ranked = sorted(
        (score, it) for it, score in scores.items()
        if os.path.isfile(os.path.join(layout.checkpoint_path(save_dir, it), layout.META)))
    if len(ranked) < k:
        raise ConversionError(f"only {len(ranked)} checkpoints in {save_dir} have a validation score; asked for top {k}")
    return [layout.checkpoint_path(save_dir, it) for _, it in ranked[:k]]


def _model_keys(reader: DcpReader) -> List[str]:
    return sorted(k for k in reader.tensors if not k.startswith("optimizer"))


def merge_checkpoints(inputs: List[str], output: str, log: Callable[[str], None] = print) -> dict:
    """Write the mean of ``inputs`` (checkpoint or save directories) to the new directory ``output``."""
    if len(inputs) < 2:
        raise ConversionError("give at least two checkpoints to merge")
    paths = [resolve_checkpoint(p) for p in inputs]
    check_output(output, paths)
    for path in paths:
        check_torch_dist(path, megatron_lm=True)  # every pickle and data file, before anything is read
    readers = [DcpReader(p) for p in paths]
    keys = _model_keys(readers[0])
    for path, reader in zip(paths[1:], readers[1:]):
        if _model_keys(reader) != keys:
            raise ConversionError(f"{path} holds other tensors than {paths[0]}: merge checkpoints of one model")
        for key in keys:
            if reader.tensors[key].shape != readers[0].tensors[key].shape:
                raise ConversionError(f"{path}: {key} has shape {reader.tensors[key].shape}, "
                                      f"{paths[0]} {readers[0].tensors[key].shape}")
    meta = layout.read_meta_file(paths[0])
    with atomic_directory(output) as tmp:
        target = layout.checkpoint_path(tmp, 0)
        writer = DcpWriter(target)
        for i, key in enumerate(keys):
            info = readers[0].tensors[key]
            for chunk in info.chunks:
                acc = None
                for reader in readers:
                    box = reader.read_box(key, chunk.offsets, chunk.sizes).to(torch.float64)
                    acc = box if acc is None else acc.add_(box)
                mean = acc / len(readers) if info.dtype.is_floating_point else readers[0].read_box(
                    key, chunk.offsets, chunk.sizes).to(torch.float64)
                writer.add_tensor(key, info.shape, chunk.offsets, mean.to(info.dtype))
            if (i + 1) % 50 == 0 or i + 1 == len(keys):
                log(f"merged {i + 1}/{len(keys)} tensors")
        for key in sorted(readers[0].objects):
            if not key.startswith("optimizer"):
                writer.add_object(key, readers[0].read_object(key)[0])
        writer.finish()
        meta.update(iteration=0, consumed_samples=0, consumed_tokens=0, has_optimizer=False,
                    optimizer_parts=0, scheduler=None, merged_from=paths)
        write_text(os.path.join(target, layout.META), json.dumps(meta, indent=2, default=str))
        write_text(os.path.join(tmp, layout.TRACKER), "0")  # the folder appears whole (atomic_directory)
    return {"inputs": paths, "tensors": len(keys), "output": output}
