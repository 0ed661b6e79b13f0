#!/usr/bin/env python
"""How a dLLM checkpoint ranks the replies of held-out preference pairs (before / after DPO).

    python tools/eval_preference.py --load runs/demo/sft --data-path runs/demo/chat/heldout_dpo \
        --tokenizer-model runs/demo/data/tokenizer.model
    python tools/eval_preference.py --load runs/demo/dpo --ref-load runs/demo/sft \
        --data-path runs/demo/chat/heldout_dpo --tokenizer-model ... --variance-repeats 64

--data-path is a prefix written by ``tools/preprocess_data.py --format dpo`` (``P_dpo``); every pair
is scored, in file order, each reply padded with EOS to a multiple of 32 as DPO training pads it and
laid out in a window of --seq-length tokens. A reply is scored by its ELBO estimate with VRPO's noise
(--elbo-samples times, shared by the two replies of a pair and by the reference; the layout of
``--dpo-block-size``: MDLM, or block diffusion with --block-size). Prints one JSON object:

  preference_accuracy   share of pairs with ELBO(chosen) > ELBO(rejected) under --load
  elbo_chosen, elbo_rejected   mean ELBOs (nats per reply)
  with --ref-load (DPO's implicit reward r = beta (ELBO_load - ELBO_ref)):
  reward_accuracy       share of pairs with r(chosen) > r(rejected)
  reward_margin, dpo_loss   means over the pairs
  with --ref-load and --variance-repeats R >= 2: variance_ratio, the variance of the DPO loss
  estimate of the first --variance-pairs pairs over R noise draws (--variance-samples times per ELBO,
  default --elbo-samples), naive noise over VRPO's, with
  its 90% bootstrap interval (megatron_dllm/generate/preference_eval.py)

A flag out of range is refused with one line, exit 2, before a model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="the checkpoint scored (its latest iteration)")
    p.add_argument("--ref-load", default=None, help="the reference checkpoint of DPO's implicit reward")
    p.add_argument("--data-path", required=True, help="preference pairs: the P_dpo prefix of "
                   "tools/preprocess_data.py --format dpo")
    p.add_argument("--tokenizer-model", required=True, help="the tokenizer the pairs were preprocessed with")
    p.add_argument("--seq-length", type=int, default=32, help="tokens per reply window (default 32)")
    p.add_argument("--block-size", type=int, default=None,
                   help="score in the block-diffusion layout at this block size (as --dpo-block-size); "
                   "default: the MDLM layout")
    p.add_argument("--elbo-samples", type=int, default=8, help="noise draws per ELBO estimate (default 8)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta of the implicit reward (default 0.1)")
    p.add_argument("--batch-pairs", type=int, default=32, help="pairs per forward (default 32)")
    p.add_argument("--limit", type=int, default=None, help="score the first N pairs only")
    p.add_argument("--variance-repeats", type=int, default=0,
                   help="with --ref-load: noise draws R >= 2 of the variance ratio (default 0: not measured)")
    p.add_argument("--variance-pairs", type=int, default=32, help="pairs of the variance ratio's batch")
    p.add_argument("--variance-samples", type=int, default=None,
                   help="noise draws per ELBO estimate of the variance ratio (default: --elbo-samples; use the "
                   "DPO run's --dpo-elbo-samples)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def _check(args) -> None:
    """ValueError (one line) for a flag out of range."""
    import math

    for flag, value in (("--seq-length", args.seq_length), ("--elbo-samples", args.elbo_samples),
                        ("--batch-pairs", args.batch_pairs), ("--variance-pairs", args.variance_pairs),
                        ("--variance-samples", args.variance_samples or 1)):
        if value < 1:
            raise ValueError(f"{flag} {value} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit} must be >= 1")
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise ValueError(f"--beta {args.beta} must be a finite number > 0")
    if args.block_size is not None and (args.block_size < 1 or args.seq_length % args.block_size):
        raise ValueError(f"--block-size {args.block_size} must be >= 1 and divide --seq-length {args.seq_length}")
    if args.variance_repeats and (args.variance_repeats < 2 or not args.ref_load):
        raise ValueError(f"--variance-repeats {args.variance_repeats} needs --ref-load and R >= 2")
    if not os.path.exists(args.tokenizer_model):
        raise ValueError(f"--tokenizer-model {args.tokenizer_model}: not found")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    from megatron_dllm.config import ConfigError, ParallelConfig
    from megatron_dllm.data.errors import DataError

    try:  # every flag and file is checked before a process group or model exists
        from megatron_dllm.checkpoint.layout import recorded_mask_token_id
        from megatron_dllm.data.sft_dataset import DPOPairDataset
        from megatron_dllm.data.tokenizer import load_tokenizer, require_mask_token
        from megatron_dllm.generate.loading import inference_config

        _check(args)
        tok = load_tokenizer(args.tokenizer_model)
        meta, _, _ = inference_config(args.load, ParallelConfig())
        if args.ref_load:
            inference_config(args.ref_load, ParallelConfig())
        mask_id = recorded_mask_token_id(meta)
        mask_id = mask_id if mask_id is not None else require_mask_token(tok)
        pairs = DPOPairDataset(args.data_path, args.seq_length, tok.eod_id, shuffle=False)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from megatron_dllm.platform.distributed import run_tool

    def body(device: str) -> None:
        from megatron_dllm.generate.loading import load_for_inference
        from megatron_dllm.generate.preference_eval import (loss_variance_ratio, preference_metrics,
                                                            scoring_objective)

        start = time.perf_counter()
        reference = load_for_inference(args.ref_load, ParallelConfig(), device)[0] if args.ref_load else None
        policy = load_for_inference(args.load, ParallelConfig(), device)[0]
        scorer = scoring_objective(args.seq_length, mask_token_id=mask_id, samples=args.elbo_samples,
                                   beta=args.beta, block_size=args.block_size, seed=args.seed, device=device)
        record = {"load": args.load, "ref_load": args.ref_load, "block_size": args.block_size,
                  **preference_metrics(policy, pairs, scorer, reference=reference, batch_pairs=args.batch_pairs,
                                       limit=args.limit)}
        if args.variance_repeats:
            record["variance"] = loss_variance_ratio(policy, reference, pairs, scorer, repeats=args.variance_repeats,
                                                     batch_pairs=args.variance_pairs, samples=args.variance_samples)
        record["seconds"] = round(time.perf_counter() - start, 2)
        print(json.dumps(record), flush=True)

    return run_tool(args.device, body)


if __name__ == "__main__":
    sys.exit(main())
