#!/usr/bin/env python
"""Import an HF safetensors checkpoint (LLaDA2MoE, LLaDA-MoE, BailingMoeV2) as a megatron_dllm checkpoint.

    python tools/import_hf.py --hf HF_DIR --save OUT_DIR \\
        [--target-tensor-model-parallel-size N --target-pipeline-model-parallel-size N \\
         --target-expert-model-parallel-size N] [--dtype keep|bf16|fp32|fp16] \\
        [--to-dllm [--mask-token-id ID | --add-mask-token] [--mask-embedding-init mean|zero|copy:ID]
                   [--label-shift | --token-shift]]

HF_DIR: config.json (model_type llada2_moe, llada or bailing_moe) and model*.safetensors (with an index
when sharded). The Megatron model is derived from config.json. LLaDA2 and LLaDA-MoE sources become dLLM
checkpoints (the config's mask_token_id, or --mask-token-id); BailingMoeV2 (Ling-2.0) sources become AR checkpoints, or dLLM ones with
--to-dllm (the same result as importing, then tools/convert_ar_to_dllm.py). MTP layers are dropped
with a warning. OUT_DIR must not exist; it appears complete or not at all, with OUT_DIR/model.yaml (the
model's flags). Then ``python -m megatron_dllm.pretrain --config OUT_DIR/model.yaml --load OUT_DIR ...``.
Bad input: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_dllm.convert.cli_flags import add_output, add_target_layout  # noqa: E402  (no torch import)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, help="HF model directory (read only).")
    p.add_argument("--save", required=True, help="Output directory (must not exist).")
    add_target_layout(p)
    p.add_argument("--dtype", default="keep", choices=["keep", "bf16", "fp32", "fp16"],
                   help="Weight dtype in the output (default: as stored); the router's expert bias stays fp32.")
    p.add_argument("--to-dllm", action="store_true",
                   help="AR sources: add the mask token and write a dLLM checkpoint (as convert_ar_to_dllm.py).")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--mask-token-id", type=int, help="Use this id as [MASK].")
    mask.add_argument("--add-mask-token", action="store_true", help="With --to-dllm: add a new [MASK] token.")
    p.add_argument("--mask-embedding-init", default="mean", help="New rows: mean (default), zero, or copy:ID.")
    shift = p.add_mutually_exclusive_group()
    shift.add_argument("--label-shift", action="store_true",
                       help="With --to-dllm: record AR-aligned labels (as convert_ar_to_dllm.py --label-shift).")
    shift.add_argument("--token-shift", action="store_true",
                       help="With --to-dllm: record the token shift (as convert_ar_to_dllm.py --token-shift).")
    add_output(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from megatron_dllm.checkpoint.errors import CheckpointError
    from megatron_dllm.convert.errors import ConversionError
    from megatron_dllm.convert.hf_import import ImportRequest, prepare_import, run_import

    request = ImportRequest(
        hf=args.hf, save=args.save, target_tensor_parallel=args.target_tensor_model_parallel_size,
        target_pipeline_parallel=args.target_pipeline_model_parallel_size,
        target_expert_parallel=args.target_expert_model_parallel_size, dtype=args.dtype, to_dllm=args.to_dllm,
        mask_token_id=args.mask_token_id, add_mask_token=args.add_mask_token,
        mask_embedding_init=args.mask_embedding_init, label_shift=args.label_shift, token_shift=args.token_shift,
        max_file_gb=args.max_file_gb)
    try:
        prepared = prepare_import(request)
    except (ConversionError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in prepared.imported.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    plan = prepared.conversion.plan
    print(f"source: {args.hf} ({prepared.imported.family}, objective {prepared.imported.objective}) -> "
          f"objective {prepared.objective}, mask token {plan.mask_token_id} ({plan.how}), rows {plan.padded}")

    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    setup_device("cpu")
    init_process_group("cpu")
    try:
        summary = run_import(prepared, progress=not args.quiet)
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown()
    print(json.dumps(summary, indent=2))
    print(f"then: python -m megatron_dllm.pretrain --config {os.path.join(args.save, 'model.yaml')} "
          f"--load {args.save} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
