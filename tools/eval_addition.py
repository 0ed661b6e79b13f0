#!/usr/bin/env python
"""Accuracy of a checkpoint on the synthetic addition task (held-out problems, e.g. "47+38=").

    python tools/eval_addition.py --load runs/demo/dllm --tokenizer-model runs/demo/data/tokenizer.model
    python tools/eval_addition.py --load runs/demo/dllm ... --threshold 1.0 0.9 0.5 0.1   # a sweep
    python tools/eval_addition.py --load runs/demo/ar_baseline ...                        # AR: greedy
    python tools/eval_addition.py --load runs/demo/sft --format chat ...      # "What is 47+08?" as a user turn

A dLLM checkpoint is decoded block by block with the confidence threshold (tools/generate.py's
decoder, KV cache on), honouring the token shift / clean stream its metadata records; an AR
checkpoint (objective ``ar``) greedily, one token per forward. ``--decoder ar`` also decodes a dLLM
trained with a causal clean stream greedily (refused for any other dLLM). The problems are those
``megatron_dllm.data.addition.AdditionTask`` holds out for the given --max-digits / --num-test /
--task-seed, which must match the corpus the model was trained on (the demo's defaults). ``--format
chat`` asks each problem as a user turn (``What is 47+08?``, data/addition_chat.py) rendered with
--chat-template (default auto: the tokenizer's template, else the plain one of
tools/preprocess_data.py), as an SFT model's data was; the default ``task`` writes it as the
pretraining documents do (``47+08=``). The model
is loaded once; prints one JSON object per threshold: accuracy, correct, total, tokens_per_forward
(answer tokens with EOS / decoding forwards), model_calls_per_problem (every forward, cache passes
included), decode_seconds (sum of the decode calls, model loading excluded), seconds, examples.
A flag out of range (--block-length / --steps / --gen-length / --num-test < 1, a --threshold outside
[0, 1]) is refused with one line, exit 2, before the model is loaded.
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
                   help="auto: ar for an AR checkpoint, else diffusion; ar on a dLLM needs a causal clean stream")
    p.add_argument("--threshold", type=float, nargs="+", default=[0.95],
                   help="confidence threshold(s) of diffusion decoding; several give a sweep (one model load)")
    p.add_argument("--block-length", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="decoding steps per block (default: block length)")
    p.add_argument("--minimal-topk", type=int, default=1,
                   help="step cap of the official LLaDA2 generate: steps = min(steps, gen_length // minimal_topk); "
                   "0 turns it off")
    p.add_argument("--gen-length", type=int, default=None,
                   help="tokens to generate (default: the task's answer length, digits + EOD, as in training)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step")
    p.add_argument("--separate-commits", action="store_true",
                   help="write each finished block to the KV cache in its own forward (default: fused "
                   "into the next block's first step; same tokens)")
    p.add_argument("--max-digits", type=int, default=2, help="operand digits of the task")
    p.add_argument("--num-test", type=int, default=200, help="held-out problems of the task")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the task's train/test split")
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="score the held-out problems (default) or as many training problems")
    p.add_argument("--format", default="task", choices=["task", "chat"],
                   help="task: '47+08=' as in the pretraining documents; chat: 'What is 47+08?' as a user turn "
                   "rendered with --chat-template (an SFT model)")
    p.add_argument("--chat-template", default="auto",
                   help="with --format chat: auto (the tokenizer's template, else plain), plain, or a Jinja file")
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
    from megatron_dllm.data.errors import DataError

    try:  # every flag is checked before a process group or model exists
        from megatron_dllm.checkpoint.layout import recorded_mask_token_id
        from megatron_dllm.data.tokenizer import load_tokenizer, require_mask_token
        from megatron_dllm.generate.loading import inference_config
        from megatron_dllm.generate.task_eval import addition_task, chat_prompts, check_task_prompts, task_prompts
        from megatron_dllm.generate.variants import (decode_configs, generation_length, max_positions,
                                                     resolve_decoder)

        task = addition_task(args.max_digits, args.num_test, args.task_seed)
        gen_length = generation_length(args.gen_length, task.answer_tokens)
        meta, model_cfg, _ = inference_config(args.load, ParallelConfig())
        decoder = resolve_decoder(meta, args.decoder)
        tok = load_tokenizer(args.tokenizer_model)
        if args.format == "chat":
            from megatron_dllm.data.chat_template import load_chat_template

            prompts = chat_prompts(tok, task, load_chat_template(args.chat_template, tok))
        else:
            prompts = task_prompts(tok, task)
        configs = [None]
        if decoder == "diffusion":
            mask_id = recorded_mask_token_id(meta)
            configs = decode_configs(
                meta, args.threshold, vocab_size=model_cfg.vocab_size,
                mask_id=mask_id if mask_id is not None else require_mask_token(tok),
                gen_length=gen_length, block_length=args.block_length,
                steps=args.steps if args.steps is not None else args.block_length,
                minimal_topk=args.minimal_topk, eos_id=tok.eod_id, use_cache=not args.no_cache,
                fuse_commit=not args.separate_commits)
        problems = task.test_problems() if args.split == "test" else task.train_pairs[: args.num_test]
        check_task_prompts(tok, task, problems, gen_length, model_cfg.vocab_size, max_positions(model_cfg),
                           prompts)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from megatron_dllm.platform.distributed import run_tool

    def body(device: str) -> None:
        from megatron_dllm.generate.loading import full_vocab_forward, load_for_inference
        from megatron_dllm.generate.task_eval import addition_accuracy

        model, model_cfg, meta = load_for_inference(args.load, ParallelConfig(), device)
        forward = full_vocab_forward(model, model_cfg.vocab_size)
        for cfg in configs:
            start = time.perf_counter()
            result = addition_accuracy(model, forward, tok, task, problems, decoder=decoder, decode_cfg=cfg,
                                       max_new_tokens=gen_length, device=device,
                                       num_examples=args.examples, use_cache=not args.no_cache,
                                       prompts=prompts)
            record = {"decoder": decoder, "format": args.format, "threshold": cfg.threshold if cfg else None,
                      "block_length": cfg.block_length if cfg else None,
                      "steps": cfg.effective_steps if cfg else None,
                      "token_shift": cfg.token_shift if cfg else None,
                      "clean_stream": cfg.clean_stream if cfg else None, "split": args.split,
                      **result.as_dict(), "seconds": round(time.perf_counter() - start, 2)}
            print(json.dumps(record), flush=True)

    return run_tool(args.device, body)


if __name__ == "__main__":
    sys.exit(main())
