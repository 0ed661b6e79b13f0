"""HF safetensors (LLaDA2MoE / BailingMoeV2) -> our torch_dist checkpoint, streaming.

    prepared = prepare_import(ImportRequest(hf=HF_DIR, save=OUT_DIR, target_tensor_parallel=2))
    summary = run_import(prepared)      # needs torch.distributed initialised (one rank)

The inverse of ``hf_export``: the model is derived from ``config.json`` (``hf_import_config``), the
tensors are read with ``safe_open`` box by box (``hf_source``) and written by the AR -> dLLM
converter's machinery (``convert.run``: Megatron-Core's own chunk list from ``targets.py``, the
``writer.py`` stream, an atomic output directory), so the output is what ``pretrain --load`` asks for
under any layout. ``prepare_import`` does every check and writes nothing.

LLaDA2 sources give a dLLM checkpoint (objective mdlm, the config's ``mask_token_id``). BailingMoeV2
sources give an AR checkpoint (objective ar; convert it with ``tools/convert_ar_to_dllm.py``), or with
``to_dllm`` a dLLM one with the mask token chosen and initialised exactly as that tool does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from megatron_dllm.checkpoint.output import check_output
from megatron_dllm.convert.convert import ConvertRequest, PreparedConversion, _meta, run, target_parallel
from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.hf_import_config import LLADA_MOE, ImportedConfig, model_config_from_hf
from megatron_dllm.convert.hf_source import HFSource
from megatron_dllm.convert.mask_token import MaskTokenPlan, padded_size, parse_init, plan_mask_token

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOOL = "megatron_dllm.convert.hf_import (tools/import_hf.py)"
MODEL_YAML = "model.yaml"


@dataclass
class ImportRequest:
    """Command-line options of ``tools/import_hf.py``."""

    hf: str
    save: str
    target_tensor_parallel: int = 1
    target_pipeline_parallel: int = 1
    target_expert_parallel: int = 1
    dtype: str = "keep"
    to_dllm: bool = False
    mask_token_id: Optional[int] = None
    add_mask_token: bool = False
    mask_embedding_init: str = "mean"
    label_shift: bool = False
    token_shift: bool = False
    max_file_gb: float = 8.0


@dataclass
class PreparedImport:
    request: ImportRequest
    imported: ImportedConfig
    conversion: PreparedConversion   # what convert.run writes
    objective: str                   # of the output: "mdlm" or "ar"


def read_hf_config(directory: str) -> dict:
    """The ``config.json`` of an HF model directory as a dict; ConversionError when there is none."""
    path = os.path.join(directory, "config.json")
    if not os.path.isdir(directory):
        raise ConversionError(f"--hf {directory} is not a directory")
    if not os.path.isfile(path):
        raise ConversionError(f"{directory} has no config.json: pass an HF model directory")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except ValueError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path} does not hold a JSON object")
    return config


def _skipped(source_files, imported: ImportedConfig) -> tuple:
    """HF tensors deliberately not imported: MTP layers (and a tied lm_head copy)."""
    layers = imported.model.num_layers
    mtp = tuple(f"model.layers.{layers + i}." for i in range(imported.mtp_layers))
    out = [n for n in source_files if mtp and n.startswith(mtp)]
    if not imported.model.untie_embeddings_and_output_weights and "lm_head.weight" in source_files:
        out.append("lm_head.weight")
        imported.warnings.append("tie_word_embeddings is set: lm_head.weight is not imported (the output layer "
                                 "shares the embedding)")
    return tuple(out)


def _plan(request: ImportRequest, imported: ImportedConfig, rows: int, tp: int) -> MaskTokenPlan:
    cfg = imported.model
    vocab = cfg.vocab_size
    if rows != vocab:
        raise ConversionError(f"the embedding has {rows} rows but config.json vocab_size is {vocab}")
    if request.to_dllm:
        return plan_mask_token(vocab_size=vocab, source_padded=rows, divisible_by=cfg.make_vocab_size_divisible_by,
                               target_tensor_parallel=tp, mask_token_id=request.mask_token_id,
                               add_mask_token=request.add_mask_token, init=request.mask_embedding_init)
    padded = max(padded_size(vocab, cfg.make_vocab_size_divisible_by, tp), vocab)
    if imported.objective == "ar":
        if request.mask_token_id is not None or request.add_mask_token:
            raise ConversionError("--mask-token-id / --add-mask-token need --to-dllm for an AR (bailing_moe) source")
        return MaskTokenPlan(mask_token_id=None, how="none", source_vocab_size=vocab, vocab_size=vocab,
                             source_padded=rows, padded=padded, init=request.mask_embedding_init, init_rows=[])
    if request.add_mask_token:
        raise ConversionError(f"--add-mask-token: an {imported.family} checkpoint is already a dLLM with a mask "
                              "token")
    mask = request.mask_token_id if request.mask_token_id is not None else imported.mask_token_id
    if mask is None:
        raise ConversionError("config.json has no mask_token_id: pass --mask-token-id ID (LLaDA2.0 and "
                              "LLaDA-MoE: 156895)")
    if not 0 <= mask < vocab:
        raise ConversionError(f"--mask-token-id {mask} is outside the vocabulary [0, {vocab})")
    how = "explicit" if request.mask_token_id is not None else "config.json"
    return MaskTokenPlan(mask_token_id=mask, how=how, source_vocab_size=vocab, vocab_size=vocab, source_padded=rows,
                         padded=padded, init=request.mask_embedding_init, init_rows=[])


def prepare_import(request: ImportRequest) -> PreparedImport:
    """Open and check everything; raise ConversionError (one line) on bad input. Writes nothing."""
    check_output(request.save, inputs=[request.hf])
    if request.dtype not in DTYPES:
        raise ConversionError(f"--dtype {request.dtype!r}: choose one of {', '.join(DTYPES)}")
    parse_init(request.mask_embedding_init)
    if not (math.isfinite(request.max_file_gb) and request.max_file_gb > 0):
        raise ConversionError(f"--max-file-gb {request.max_file_gb} must be a positive number of GiB")
    imported = model_config_from_hf(read_hf_config(request.hf))
    if request.to_dllm and imported.objective != "ar":
        raise ConversionError(f"--to-dllm is for AR sources (bailing_moe): an {imported.family} checkpoint is "
                              "already a dLLM")
    if (request.label_shift or request.token_shift) and not request.to_dllm:
        raise ConversionError("--label-shift / --token-shift record how a converted AR model is trained: they need "
                              "--to-dllm (released LLaDA2 models use same-position labels)")
    if request.label_shift and request.token_shift:
        raise ConversionError("--label-shift and --token-shift are two shifts: pick one")
    parallel = target_parallel(imported.model, request.target_tensor_parallel, request.target_pipeline_parallel,
                               request.target_expert_parallel)
    meta = {"objective": imported.objective}
    layout = {}
    if imported.family == LLADA_MOE:
        from megatron_dllm.convert import hf_lladamoe

        layout = dict(tensors=hf_lladamoe.hf_pieces, embedding=hf_lladamoe.EMBEDDING)
    source = HFSource(request.hf, imported.model, dtype=DTYPES[request.dtype], meta=meta, **layout)
    source.skipped.update(_skipped(source.files, imported))
    plan = _plan(request, imported, source.rows, parallel.tensor_model_parallel_size)
    source.check()
    model = dataclasses.replace(imported.model, vocab_size=plan.vocab_size)
    convert_request = ConvertRequest(load=request.hf, save=request.save,
                                     target_tensor_parallel=parallel.tensor_model_parallel_size,
                                     target_pipeline_parallel=parallel.pipeline_model_parallel_size,
                                     target_expert_parallel=parallel.expert_model_parallel_size,
                                     mask_embedding_init=request.mask_embedding_init, label_shift=request.label_shift,
                                     token_shift=request.token_shift, max_file_gb=request.max_file_gb)
    objective = "mdlm" if (request.to_dllm or imported.objective == "mdlm") else "ar"
    return PreparedImport(request, imported, PreparedConversion(convert_request, source, model, parallel, plan),
                          objective)


def _import_meta(prepared: PreparedImport):
    def make(conversion: PreparedConversion, dropped) -> dict:
        meta = _meta(conversion, dropped)
        record = meta["conversion"]
        record["tool"] = TOOL
        record["source"].update(family=prepared.imported.family, dtype=prepared.request.dtype,
                                mtp_layers_dropped=prepared.imported.mtp_layers,
                                objective=prepared.imported.objective)
        record["dropped_source_tensors"] = sorted(conversion.source.skipped)
        record["warnings"] = list(prepared.imported.warnings)
        meta["objective"] = prepared.objective
        meta["run"]["diffusion"]["objective"] = prepared.objective
        if prepared.objective == "ar":
            meta["mask_token_id"] = None
            meta["run"]["diffusion"]["mask_token_id"] = None
        return meta
    return make


def model_yaml(prepared: PreparedImport) -> str:
    """``OUT/model.yaml``: the flags of the imported model, for ``pretrain --config OUT/model.yaml``.

    ``pretrain --load`` refuses flags that describe another architecture; no preset has an imported
    model's exact values, so the import writes them (Megatron-LM flag names, None values left out).
    """
    from megatron_dllm.arguments import _flag

    lines = [f"# written by tools/import_hf.py from {os.path.abspath(prepared.request.hf)}"]
    for f in dataclasses.fields(prepared.conversion.model):
        value = getattr(prepared.conversion.model, f.name)
        if value is not None:
            lines.append(f"{_flag(f)[2:]}: {json.dumps(value)}")
    lines.append(f"dllm-objective: {prepared.objective}")
    if prepared.conversion.plan.mask_token_id is not None:
        lines.append(f"dllm-mask-token-id: {prepared.conversion.plan.mask_token_id}")
    for name in ("label_shift", "token_shift"):
        if getattr(prepared.request, name):
            lines.append(f"dllm-{name.replace('_', '-')}: true")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def without_zip_crc32():
    """``torch.save`` (each chunk of the torch_dist writer is one) without the zip records' CRC32.

    The CRC is the writer's largest cost (400 MB/s on one core, 2.3 GB: 6.9 of 12.6 s) and nothing
    reads it: ``torch.load`` and the torch_dist readers do not check it (torch's
    ``set_crc32_options`` note); the files stay valid for them. The previous setting is restored.
    """
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def run_import(prepared: PreparedImport, *, progress: bool = True) -> dict:
    """Write the imported checkpoint to ``request.save`` (atomically); returns a summary dict."""
    try:
        with without_zip_crc32():
            summary = run(prepared.conversion, progress=progress, make_meta=_import_meta(prepared),
                          extra_files={MODEL_YAML: model_yaml(prepared)}, label="importing")
    finally:
        prepared.conversion.source.close()
    summary.update(dropped_source_tensors=len(prepared.conversion.source.skipped),
                   family=prepared.imported.family, objective=prepared.objective,
                   mtp_layers_dropped=prepared.imported.mtp_layers, warnings=list(prepared.imported.warnings))
    return summary
