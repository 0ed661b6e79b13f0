#!/usr/bin/env python
"""Accuracy of a checkpoint on the synthetic addition task (held-out problems, e.g. "47+38=").

    python tools/eval_addition.py --load runs/demo/dllm --tokenizer-model runs/demo/data/tokenizer.model
    python tools/eval_addition.py --load runs/demo/dllm ... --threshold 1.0 0.9 0.5 0.1   # a sweep
    python tools/eval_addition.py --load runs/demo/ar_baseline ...                        # AR: greedy

A dLLM checkpoint is decoded block by block with the confidence threshold (tools/generate.py's
decoder, KV cache on); an AR checkpoint (objective ``ar`` in its metadata) greedily, one token per
forward. The problems are those ``megatron_dllm.data.addition.AdditionTask`` holds out for the
given --max-digits / --num-test / --task-seed, which must match the corpus the model was trained on
(the demo's defaults). Prints one JSON object per threshold (accuracy, correct, total,
tokens_per_forward, seconds, examples).
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
    p.add_argument("--load", required=True, help="checkpoint directory (its latest iteration is used)")
    p.add_argument("--tokenizer-model", required=True, help="the tokenizer the model was trained with")
    p.add_argument("--decoder", default="auto", choices=["auto", "diffusion", "ar"],
                   help="auto: ar for an AR checkpoint, else diffusion")
    p.add_argument("--threshold", type=float, nargs="+", default=[0.95],
                   help="confidence threshold(s) of diffusion decoding; several give a sweep")
    p.add_argument("--block-length", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="decoding steps per block (default: block length)")
    p.add_argument("--gen-length", type=int, default=None,
                   help="tokens to generate (default: the task's answer length, digits + EOD, as in training)")
    p.add_argument("--max-digits", type=int, default=2, help="operand digits of the task")
    p.add_argument("--num-test", type=int, default=200, help="held-out problems of the task")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the task's train/test split")
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="score the held-out problems (default) or as many training problems")
    p.add_argument("--examples", type=int, default=5, help="completions to show per result")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    if not os.path.exists(args.tokenizer_model):
        print(f"error: --tokenizer-model {args.tokenizer_model}: not found", file=sys.stderr)
        return 2
    from megatron_dllm.config import ConfigError, ParallelConfig
    from megatron_dllm.data.addition import AdditionTask
    from megatron_dllm.data.errors import DataError
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    try:
        task = AdditionTask(max_digits=args.max_digits, num_test=args.num_test, seed=args.task_seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = setup_device(None if args.device == "auto" else args.device)
    init_process_group(device)
    try:
        from megatron_dllm.data.tokenizer import load_tokenizer, require_mask_token
        from megatron_dllm.generate.decoding import DecodeConfig
        from megatron_dllm.generate.loading import full_vocab_forward, load_for_inference
        from megatron_dllm.generate.task_eval import addition_accuracy

        tok = load_tokenizer(args.tokenizer_model)
        model, model_cfg, meta = load_for_inference(args.load, ParallelConfig(), device)
        decoder = args.decoder
        if decoder == "auto":
            decoder = "ar" if meta.get("objective") == "ar" else "diffusion"
        forward = full_vocab_forward(model, model_cfg.vocab_size)
        gen_length = args.gen_length or task.answer_tokens
        problems = task.test_problems() if args.split == "test" else task.train_pairs[: args.num_test]
        settings = [None] if decoder == "ar" else args.threshold
        for threshold in settings:
            cfg = None
            if decoder == "diffusion":
                mask_id = meta.get("mask_token_id")
                cfg = DecodeConfig(mask_id=mask_id if mask_id is not None else require_mask_token(tok),
                                   gen_length=gen_length, block_length=args.block_length,
                                   steps=args.steps or args.block_length, threshold=threshold,
                                   eos_id=tok.eod_id)
                cfg.validate()
            start = time.perf_counter()
            result = addition_accuracy(model, forward, tok, task, problems, decoder=decoder, decode_cfg=cfg,
                                       max_new_tokens=gen_length, device=device,
                                       num_examples=args.examples)
            record = {"decoder": decoder, "threshold": threshold, "block_length": args.block_length
                      if decoder == "diffusion" else None, "split": args.split, **result.as_dict(),
                      "seconds": round(time.perf_counter() - start, 2)}
            print(json.dumps(record), flush=True)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        teardown()
        return 2
    teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
