#!/usr/bin/env python
"""Export a megatron_dllm checkpoint to HF safetensors in the LLaDA2.0 layout (LLaDA2MoeModelLM).

    python tools/export_hf.py --load DLLM_DIR --save HF_DIR [--max-shard-size 5GB] [--dtype keep|bf16|fp32]
                              [--pad-token-id ID] [--check]

HF_DIR gets config.json (model_type llada2_moe), sharded safetensors with an index, and our
transformers model files, so ``AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True)``
loads it offline. ``--check`` then runs that model and the Megatron model on the same tokens and
reports max |dlogits| (exit 1 above --tolerance). HF_DIR must not exist; bad input: ``error:``, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="megatron_dllm checkpoint (e.g. from convert_ar_to_dllm.py).")
    p.add_argument("--save", required=True, help="Output directory (must not exist).")
    p.add_argument("--max-shard-size", default="5GB", help="Largest safetensors file (default 5GB).")
    p.add_argument("--dtype", default="keep", choices=["keep", "bf16", "fp32", "fp16"],
                   help="Tensor dtype in the export (default: as stored).")
    p.add_argument("--pad-token-id", type=int, default=None, help="pad_token_id for config.json.")
    p.add_argument("--check", action="store_true", help="Compare the exported model's logits with Megatron's.")
    p.add_argument("--tolerance", type=float, default=1e-4, help="Largest allowed |dlogits| for --check.")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from megatron_dllm.convert.errors import ConversionError
    from megatron_dllm.checkpoint.output import early_path_error

    message = early_path_error(args.save, args.load)  # path errors first, before torch is imported
    if not message and not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        message = (f"error: --tolerance {args.tolerance} must be a finite number >= 0 (largest allowed "
                   "|dlogits| of --check), e.g. --tolerance 1e-4")
    if message:
        print(message, file=sys.stderr)
        return 2
    from megatron_dllm.convert.hf_export import export_hf, parse_size

    try:
        summary = export_hf(args.load, args.save, max_shard_bytes=parse_size(args.max_shard_size),
                            dtype=args.dtype, pad_token_id=args.pad_token_id, progress=not args.quiet)
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    if not args.check:
        return 0
    from megatron_dllm.convert.hf_check import compare_hf
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    setup_device("cpu")
    init_process_group("cpu")
    try:
        report = compare_hf(args.load, args.save)
    finally:
        teardown()
    print(json.dumps(report, indent=2))
    ok = report["max_abs_dlogits"] <= args.tolerance
    print(f"{'OK' if ok else 'FAILED'}: HF vs Megatron max |dlogits| = {report['max_abs_dlogits']:.3e} "
          f"(tolerance {args.tolerance:.1e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
