#!/usr/bin/env python
"""Check a converted checkpoint against its AR source: same logits when run causally.

    python tools/verify_conversion.py --ar AR_DIR --dllm OUT_DIR [--tolerance 1e-5] [--batch 2 --seq-length 64]

Runs both models (one process, CPU, fp32) on the same random tokens: the converted one with a causal
mask (and, built causal, with none) and AR labels. Prints max |dlogits|, KL(p_AR || p_dLLM), both
next-token losses, and the converted model's masked-token loss under a bidirectional mask (it is
usable as a dLLM). Exit 0 when max |dlogits| <= tolerance, 1 above it, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar", required=True, help="The AR source checkpoint.")
    p.add_argument("--dllm", required=True, help="The converted checkpoint.")
    p.add_argument("--tolerance", type=float, default=1e-5, help="Largest allowed |dlogits| (fp32).")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-length", type=int, default=None, help="Tokens per sequence (default min(L, 64)).")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--model-config", help="YAML of model flags, for AR checkpoints that record no config.")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from megatron_dllm.convert.errors import ConversionError
    from megatron_dllm.checkpoint.layout import locate

    from megatron_dllm.convert.roles import check_verify_roles
    from megatron_dllm.convert.verify import check_verify_options

    try:
        check_verify_options(tolerance=args.tolerance, batch=args.batch, seq_length=args.seq_length)
        locate(args.ar)
        locate(args.dllm)
        check_verify_roles(args.ar, args.dllm)
        override = None
        if args.model_config:
            from megatron_dllm.config_io import load_model_config

            override = load_model_config(args.model_config)
    except (ConversionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from megatron_dllm.convert.verify import verify
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    setup_device("cpu")
    init_process_group("cpu")
    try:
        report = verify(args.ar, args.dllm, batch=args.batch, seq_length=args.seq_length, seed=args.seed,
                        tolerance=args.tolerance, model_config=override)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown()
    print(json.dumps(report, indent=2))
    verdict = "OK" if report["ok"] else "FAILED"
    print(f"{verdict}: max |dlogits| = {report['max_abs_dlogits']:.3e} (tolerance {args.tolerance:.1e}), "
          f"KL mean = {report['kl_mean']:.3e}, dLLM masked CE = {report['dllm_masked_ce']:.4f}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
