"""AR Megatron checkpoint -> megatron_dllm (masked-diffusion) checkpoint.

    prepared = prepare(ConvertRequest(load=AR_DIR, save=OUT_DIR, target_tensor_parallel=2))
    summary = run(prepared)          # needs torch.distributed initialised (one rank)

``prepare`` does every check that needs no Megatron-Core (paths, formats, configuration, target
layout, mask token) and raises :class:`ConversionError` before anything is written. ``run`` streams
the tensors into a temporary directory next to the output and renames it when complete.

Weights are not changed: the converted model computes the AR model's function (run it with a causal
mask to check: ``tools/verify_conversion.py``); only the metadata (mask token, objective, label
shift) changes, plus new embedding / output rows when the vocabulary grows for the mask token.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from dataclasses import dataclass
from typing import Optional

from megatron_dllm.config import ConfigError, ModelConfig, ParallelConfig, validate
from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.keymap import DROPPED, per_layer_request
from megatron_dllm.convert.mask_token import MaskTokenPlan, parse_init, plan_mask_token
from megatron_dllm.checkpoint.output import atomic_directory, check_output, write_text
from megatron_dllm.convert.readers import Source, open_source
from megatron_dllm.convert.roles import refuse_dllm_source


@dataclass
class ConvertRequest:
    """Command-line options of ``tools/convert_ar_to_dllm.py``."""

    load: str
    save: str
    target_tensor_parallel: int = 1
    target_pipeline_parallel: int = 1
    target_expert_parallel: int = 1
    mask_token_id: Optional[int] = None
    add_mask_token: bool = False
    mask_embedding_init: str = "mean"
    tokenizer_model: Optional[str] = None
    model_config: Optional[str] = None
    label_shift: bool = False
    token_shift: bool = False
    max_file_gb: float = 8.0


@dataclass
class PreparedConversion:
    request: ConvertRequest
    source: Source
    model: ModelConfig           # the converted model (vocabulary possibly grown)
    parallel: ParallelConfig     # the layout the output is meant for
    plan: MaskTokenPlan


def target_parallel(cfg: ModelConfig, tp: int, pp: int, ep: int) -> ParallelConfig:
    """The layout an output is meant for (sequence parallel with MoE x TP), validated against ``cfg``."""
    if min(tp, pp, ep) < 1:
        raise ConversionError("target parallel sizes must be >= 1")
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              expert_model_parallel_size=ep if cfg.is_moe else 1,
                              sequence_parallel=bool(cfg.is_moe and tp > 1))
    if ep > 1 and not cfg.is_moe:
        raise ConversionError(f"--target-expert-model-parallel-size {ep} needs a MoE model; this one is dense")
    try:
        validate(cfg, parallel)
    except ConfigError as exc:
        raise ConversionError(f"target layout TP {tp} x PP {pp} x EP {ep}: {exc}") from exc
    return parallel


def prepare(request: ConvertRequest) -> PreparedConversion:
    """Open and check everything; raise ConversionError (one line) on bad input. Writes nothing."""
    check_output(request.save, inputs=[request.load])
    parse_init(request.mask_embedding_init)
    if not (math.isfinite(request.max_file_gb) and request.max_file_gb > 0):
        raise ConversionError(f"--max-file-gb {request.max_file_gb} must be a positive number of GiB "
                              "(the size of each output data file), e.g. --max-file-gb 8")
    if request.label_shift and request.token_shift:
        raise ConversionError("--label-shift and --token-shift are two shifts: pick one")
    override = None
    if request.model_config:
        from megatron_dllm.config_io import load_model_config

        try:
            override = load_model_config(request.model_config)
        except ConfigError as exc:
            raise ConversionError(str(exc)) from exc
    source = open_source(request.load, override)
    refuse_dllm_source(request.load, source.meta)
    cfg = source.config
    parallel = target_parallel(cfg, request.target_tensor_parallel, request.target_pipeline_parallel,
                               request.target_expert_parallel)
    tp = parallel.tensor_model_parallel_size
    tokenizer_mask, vocab_size = None, cfg.vocab_size
    if request.tokenizer_model:
        from megatron_dllm.data.errors import DataError
        from megatron_dllm.data.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(request.tokenizer_model)
        except DataError as exc:
            raise ConversionError(str(exc)) from exc
        tokenizer_mask, vocab_size = tok.mask_token_id, tok.vocab_size
    source_padded = source.tensor("embedding.word_embeddings.weight").shape[0]
    plan = plan_mask_token(
        vocab_size=vocab_size, source_padded=source_padded,
        divisible_by=cfg.make_vocab_size_divisible_by, target_tensor_parallel=tp,
        mask_token_id=request.mask_token_id, add_mask_token=request.add_mask_token,
        tokenizer_mask_id=tokenizer_mask, init=request.mask_embedding_init)
    # Grouped-GEMM experts are an execution choice (same checkpoint keys): the record stays portable.
    model = dataclasses.replace(cfg, vocab_size=plan.vocab_size, moe_grouped_gemm=False)
    return PreparedConversion(request, source, model, parallel, plan)


def _run_config(prepared: PreparedConversion) -> dict:
    from megatron_dllm.arguments import RunConfig
    from megatron_dllm.config import DiffusionConfig

    run = RunConfig(model=prepared.model, parallel=prepared.parallel,
                    diffusion=DiffusionConfig(mask_token_id=prepared.plan.mask_token_id, objective="mdlm",
                                              label_shift=prepared.request.label_shift,
                                              token_shift=prepared.request.token_shift))
    return run.to_dict()


def _meta(prepared: PreparedConversion, dropped) -> dict:
    src, p = prepared.source, prepared.parallel
    return {
        "iteration": 0,
        "consumed_samples": 0,
        "consumed_tokens": 0,
        "has_optimizer": False,
        "scheduler": None,
        "layout": {"world_size": None, "tp": p.tensor_model_parallel_size,
                   "pp": p.pipeline_model_parallel_size, "ep": p.expert_model_parallel_size},
        "run": _run_config(prepared),
        "mask_token_id": prepared.plan.mask_token_id,
        "objective": "mdlm",
        "label_shift": prepared.request.label_shift,
        "token_shift": prepared.request.token_shift,
        "conversion": {
            "tool": "megatron_dllm.convert (tools/convert_ar_to_dllm.py)",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "path": os.path.abspath(src.path),
                "format": src.format,
                "iteration": src.iteration,
                "config_origin": src.config_origin,
                "layout": dataclasses.asdict(src.layout) if src.layout else None,
                "objective": src.meta.get("objective"),
                "label_shift": src.meta.get("label_shift"),
                "model": dataclasses.asdict(src.config),
            },
            "mask_token": prepared.plan.as_dict(),
            "dropped_source_tensors": dropped,
            "weights_changed": bool(prepared.plan.init_rows) or prepared.plan.padded != prepared.plan.source_padded,
        },
    }


def run(prepared: PreparedConversion, *, progress: bool = True, make_meta=None, extra_files=None,
        label: str = "converting") -> dict:
    """Write the converted checkpoint to ``request.save`` (atomically); returns a summary dict.

    Needs ``torch.distributed`` initialised (one rank is enough) to list the target tensors.
    ``make_meta(prepared, dropped)`` gives ``dllm_meta.json`` (default: the AR -> dLLM record);
    the HF import passes its own. ``extra_files`` ({name: text}) are written into the output root.
    """
    from megatron_dllm.convert.progress import Progress
    from megatron_dllm.convert.targets import target_layout
    from megatron_dllm.convert.writer import resolve_targets, write_checkpoint

    source, plan = prepared.source, prepared.plan
    targets, objects = target_layout(prepared.model, plan.padded)
    resolved = resolve_targets(source, targets)
    unused = sorted(set(source.tensor_keys()) - source.used_keys())
    dropped = [k for k in unused if DROPPED.match(k)]
    unused = [k for k in unused if not DROPPED.match(k)]
    if unused:
        shown = ", ".join(unused[:3]) + (" ..." if len(unused) > 3 else "")
        raise ConversionError(f"{len(unused)} source tensors have no place in the target model ({shown}): "
                              "the recorded configuration does not describe this checkpoint")
    total = 0
    for item in targets:
        key = per_layer_request(item.key, item.global_shape, item.offsets, item.sizes)[0]
        total += item.numel * resolved[key].dtype.itemsize
    bar = Progress(total, what=label, enabled=progress)
    meta = (make_meta or _meta)(prepared, dropped)
    with atomic_directory(prepared.request.save) as tmp:
        stats = write_checkpoint(
            tmp, source, plan, targets, objects, meta,
            on_tensor=lambda item, nbytes: bar.update(nbytes, item.key),
            max_file_bytes=int(prepared.request.max_file_gb * (1 << 30)))
        for name, text in (extra_files or {}).items():
            write_text(os.path.join(tmp, name), text)
    elapsed = bar.close()
    return {
        "save": prepared.request.save, "source_format": source.format, "source_iteration": source.iteration,
        "mask_token_id": plan.mask_token_id, "mask_token": plan.how, "vocab_size": plan.vocab_size,
        "padded_vocab_size": plan.padded, "dropped_source_tensors": len(dropped), "seconds": round(elapsed, 2),
        **stats,
    }


def resume_flags(prepared: PreparedConversion) -> str:
    """Flags that make ``megatron_dllm.pretrain --load OUT`` match the converted model."""
    p, m = prepared.parallel, prepared.model
    flags = [f"--load {prepared.request.save}", f"--vocab-size {m.vocab_size}",
             f"--dllm-mask-token-id {prepared.plan.mask_token_id}"]
    if p.tensor_model_parallel_size > 1:
        flags.append(f"--tensor-model-parallel-size {p.tensor_model_parallel_size}")
    if p.pipeline_model_parallel_size > 1:
        flags.append(f"--pipeline-model-parallel-size {p.pipeline_model_parallel_size}")
    if p.expert_model_parallel_size > 1:
        flags.append(f"--expert-model-parallel-size {p.expert_model_parallel_size}")
    if p.sequence_parallel:
        flags.append("--sequence-parallel")
    if prepared.request.label_shift:
        flags.append("--dllm-label-shift")
    if prepared.request.token_shift:
        flags.append("--dllm-token-shift")
    return " ".join(flags)
