"""Export a megatron_dllm checkpoint to the HF LLaDA2.0 layout (``LLaDA2MoeModelLM``), streaming.

    HF_DIR/config.json                        model_type llada2_moe, auto_map to the files below
    HF_DIR/model-0000K-of-0000N.safetensors   per-expert tensors, ``query_key_value`` as [q | k | v]
    HF_DIR/model.safetensors.index.json       {"metadata": {"total_size"}, "weight_map": {name: file}}
    HF_DIR/configuration_llada2_moe.py        our transformers classes (trust_remote_code, offline)
    HF_DIR/modeling_llada2_moe.py
    HF_DIR/export_info.json                   source checkpoint, iteration, mask token, warnings

One tensor is in memory at a time (read as a box of our torch_dist checkpoint, transformed, written).
The directory appears atomically and an existing one is never overwritten. No Megatron-Core needed.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import torch

from megatron_dllm.checkpoint.layout import recorded_label_mode, recorded_mask_token_id, recorded_objective
from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.hf_keymap import HFTensor, hf_config, hf_tensors, mcore_qkv_to_hf
from megatron_dllm.convert.llada2_hf import DIRECTORY as MODELING_DIR
from megatron_dllm.convert.llada2_hf import FILES as MODELING_FILES
from megatron_dllm.checkpoint.output import atomic_directory, check_output, write_text
from megatron_dllm.convert.progress import Progress
from megatron_dllm.convert.readers import open_source, read_dllm_checkpoint
from megatron_dllm.convert.safetensors_stream import entry_bytes, plan_shards, write_safetensors

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '100KB' or a byte count."""
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "B": 1}
    t = str(text).strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return _positive_size(int(float(t[: -len(unit)]) * factor), text)
    if t.isdigit():
        return _positive_size(int(t), text)
    raise ConversionError(f"--max-shard-size {text!r}: give a size like 5GB, 500MB or a byte count")


def _positive_size(size: int, text: str) -> int:
    if size < 1:
        raise ConversionError(f"--max-shard-size {text!r} is zero bytes: give a size like 5GB or 500MB")
    return size


def _keeps_dtype(name: str) -> bool:
    # The router's expert bias only ranks experts; it stays fp32 (as Megatron keeps it) under --dtype.
    return name.endswith(".expert_bias")


def _produce(source, item: HFTensor, cfg, dtype) -> torch.Tensor:
    if item.transform == "zeros":
        data = torch.zeros(item.shape, dtype=torch.float32)
    else:
        data = source.tensor(item.source).read_box(item.offsets, item.sizes).reshape(item.shape)
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):  # nothing is kept on error
            raise ConversionError(f"{item.source} holds NaN / Inf values: the checkpoint's weights are not "
                                  "finite; export a checkpoint from before the run diverged")
        if item.transform == "qkv":
            data = mcore_qkv_to_hf(data, cfg.num_attention_heads, cfg.query_groups, cfg.head_dim)
    return data if dtype is None or _keeps_dtype(item.name) else data.to(dtype)


def export_hf(load: str, save: str, *, max_shard_bytes: int = 5 << 30, dtype: str = "keep",
              pad_token_id: Optional[int] = None, progress: bool = True) -> dict:
    """Write the HF export of the checkpoint under ``load`` to ``save``; returns a summary dict."""
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    check_output(save, inputs=[load])
    directory, meta, cfg = read_dllm_checkpoint(load)
    if pad_token_id is not None and not 0 <= pad_token_id < cfg.vocab_size:
        raise ConversionError(f"--pad-token-id {pad_token_id} is outside the vocabulary [0, {cfg.vocab_size}): "
                              "pass the tokenizer's pad id, or leave it out")
    if meta.get("finite") is False:
        raise ConversionError(f"{directory} is recorded as holding NaN / Inf weights: export a checkpoint "
                              "from before the run diverged")
    source = open_source(directory)
    emb = source.tensor("embedding.word_embeddings.weight")
    rows = emb.shape[0]
    has_bias = any(k.endswith("mlp.router.expert_bias") for k in source.reader.tensors)
    items = hf_tensors(cfg, rows, has_expert_bias=has_bias)
    for item in items:
        if item.source is None:
            continue
        shape = source.tensor(item.source).shape
        if len(shape) != len(item.sizes) or any(o + s > g for o, s, g in zip(item.offsets, item.sizes, shape)):
            raise ConversionError(f"{item.source}: shape {list(shape)} does not fit {item.name} {list(item.shape)}")
    out_dtype = DTYPES[dtype]

    def dtype_of(item: HFTensor) -> torch.dtype:
        stored = torch.float32 if item.source is None else source.tensor(item.source).dtype
        return stored if out_dtype is None or _keeps_dtype(item.name) else out_dtype

    model_dtype = out_dtype or emb.dtype
    mask_id = recorded_mask_token_id(meta)
    config, warnings = hf_config(cfg, rows, model_dtype, mask_token_id=mask_id, pad_token_id=pad_token_id)
    entries = [(item.name, item.shape, dtype_of(item)) for item in items]
    by_name = {item.name: item for item in items}
    shards = plan_shards(entries, max_shard_bytes)
    total = sum(entry_bytes(e) for e in entries)
    bar = Progress(total, what="exporting", enabled=progress)
    weight_map = {}
    with atomic_directory(save) as tmp:
        for k, shard in enumerate(shards):
            name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(tmp, name), shard,
                              lambda n: _produce(source, by_name[n], cfg, out_dtype),
                              on_tensor=lambda n, nbytes: bar.update(nbytes, n))
            weight_map.update({entry[0]: name for entry in shard})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_text(os.path.join(tmp, "model.safetensors.index.json"), json.dumps(index, indent=2))
        write_text(os.path.join(tmp, "config.json"), json.dumps(config, indent=2))
        for file in MODELING_FILES:
            shutil.copyfile(os.path.join(MODELING_DIR, file), os.path.join(tmp, file))
        info = {"source": os.path.abspath(directory), "iteration": meta.get("iteration"),
                "mask_token_id": mask_id, **recorded_label_mode(meta),
                "objective": recorded_objective(meta), "warnings": warnings}
        write_text(os.path.join(tmp, "export_info.json"), json.dumps(info, indent=2))
    elapsed = bar.close()
    return {"save": save, "tensors": len(entries), "shards": len(shards), "bytes": total,
            "vocab_size": rows, "mask_token_id": mask_id, "warnings": warnings, "seconds": round(elapsed, 2)}
