#!/usr/bin/env python
"""Average checkpoints into a new one (top-k checkpoint merging, WSM-style), streaming tensor by tensor.

    python tools/merge_checkpoints.py --inputs ckpt/iter_0000040 ckpt/iter_0000060 --save merged
    python tools/merge_checkpoints.py --load ckpt --top-k 3 --save merged     # lowest validation NELBO

The output holds weights only (iteration 0, no optimizer): `megatron_dllm.pretrain --load merged`
continues from it with a fresh optimizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", help="checkpoint (iter_*) or save directories to average")
    p.add_argument("--load", help="save directory to pick the top-k checkpoints from (with --top-k)")
    p.add_argument("--top-k", type=int, help="average the k checkpoints with the lowest validation NELBO")
    p.add_argument("--metrics-path", help="metrics.jsonl with the validation records (default: LOAD/metrics.jsonl)")
    p.add_argument("--save", required=True, help="new output directory (must not exist)")
    args = p.parse_args(argv)
    if bool(args.inputs) == bool(args.load):
        p.error("give --inputs DIR... or --load DIR --top-k K")
    if args.load and args.top_k is None:
        p.error("--load needs --top-k K")
    if args.top_k is not None and args.top_k < 2:
        print(f"error: --top-k {args.top_k} must be >= 2 (averaging needs at least two checkpoints)",
              file=sys.stderr)
        return 2
    from megatron_dllm.config import ConfigError
    from megatron_dllm.convert.errors import ConversionError
    from megatron_dllm.convert.merge import merge_checkpoints, resolve_checkpoint, top_k_by_validation
    from megatron_dllm.convert.roles import check_mergeable

    try:
        inputs = args.inputs or top_k_by_validation(args.load, args.top_k, args.metrics_path)
        check_mergeable([resolve_checkpoint(path) for path in inputs])
        result = merge_checkpoints(inputs, args.save, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ConversionError, ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
