#!/usr/bin/env python
"""Generate from a megatron_dllm checkpoint with block-wise diffusion decoding (KV cache on).

    python tools/generate.py --load runs/demo/dllm --tokenizer-model runs/demo/data/tokenizer.model \
        --prompt "Return the" --block-length 8 --threshold 0.9 0.5 0.1 --json   # a threshold sweep
    python tools/generate.py --load runs/demo/dllm --prompt-ids "5 9 5 9 5" --json
    torchrun --nproc-per-node 2 tools/generate.py --load CKPT --tensor-model-parallel-size 2 ...

Prints each completion (or, with --json, one object per prompt: text, tokens, num_tokens,
num_forward_passes, model_calls (decoding forwards + cache-only forwards), tokens_per_forward, seconds,
decoder). The checkpoint's metadata decides the variant (token shift, causal clean stream) and the
decoder: an AR checkpoint (objective ``ar``, e.g. the source of a conversion) is decoded greedily left
to right, one token per forward, up to --gen-length tokens; ``--decoder ar`` does the same for a dLLM
trained with a causal clean stream. A prompt id outside the vocabulary, a prompt + --gen-length
past the model's positions, a --mask-token-id / --eos-id outside the vocabulary, --top-k < 1 or a
parallel size the model cannot take is refused (one line, exit 2) before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint directory (its latest iteration is used)")
    p.add_argument("--tokenizer-model", help="tokenizer for --prompt / --prompts-file and for printing text")
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    p.add_argument("--prompts-file", help="file with one prompt per line")
    p.add_argument("--prompt-ids", action="append", default=[], help="prompt as space-separated token ids (repeatable)")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="decoding steps per block (default: block length)")
    p.add_argument("--minimal-topk", type=int, default=1,
                   help="step cap of the official LLaDA2 generate: steps = min(steps, gen_length // minimal_topk); "
                   "0 turns it off")
    p.add_argument("--decoder", default="auto", choices=["auto", "diffusion", "ar"],
                   help="auto: ar for an AR checkpoint, else diffusion; ar on a dLLM needs a causal clean stream")
    p.add_argument("--threshold", type=float, nargs="+", default=[0.95],
                   help="confidence threshold; several values decode every prompt once per value (a sweep)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--mask-token-id", type=int, default=None, help="default: from the checkpoint or tokenizer")
    p.add_argument("--eos-id", type=int, default=None, help="default: the tokenizer's / checkpoint's EOD")
    p.add_argument("--no-eos-early-stop", action="store_true")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step")
    p.add_argument("--separate-commits", action="store_true",
                   help="write each finished block to the KV cache in its own forward (default: fused "
                   "into the next block's first step; same tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--dllm-attention-backend", default="sdpa", choices=["sdpa", "te"])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    from megatron_dllm.config import ConfigError, ParallelConfig
    from megatron_dllm.data.errors import DataError

    prompts_text = list(args.prompt)
    if args.prompts_file:
        if not os.path.isfile(args.prompts_file):
            print(f"error: --prompts-file {args.prompts_file}: file not found", file=sys.stderr)
            return 2
        prompts_text += [line.rstrip("\n") for line in open(args.prompts_file) if line.strip()]
    if not prompts_text and not args.prompt_ids:
        print("error: give --prompt, --prompts-file or --prompt-ids", file=sys.stderr)
        return 2
    if prompts_text and not args.tokenizer_model:
        print("error: text prompts need --tokenizer-model (or pass --prompt-ids)", file=sys.stderr)
        return 2

    try:  # every flag is checked against the checkpoint's metadata before a process group or model exists
        from megatron_dllm.checkpoint.layout import recorded_mask_token_id
        from megatron_dllm.generate.loading import inference_config
        from megatron_dllm.generate.variants import (check_prompt, decode_configs, max_positions,
                                                     resolve_decoder)

        tok = None
        if args.tokenizer_model:
            from megatron_dllm.data.tokenizer import load_tokenizer

            tok = load_tokenizer(args.tokenizer_model)
        parallel = ParallelConfig(tensor_model_parallel_size=args.tensor_model_parallel_size)
        meta, model_cfg, _ = inference_config(args.load, parallel)
        mask_id = args.mask_token_id if args.mask_token_id is not None else recorded_mask_token_id(meta)
        if mask_id is None and tok is not None:
            mask_id = tok.mask_token_id
        if mask_id is None:
            raise ConfigError("no mask token id in the checkpoint or tokenizer: pass --mask-token-id")
        eos = args.eos_id if args.eos_id is not None else (tok.eod_id if tok else meta.get("eod_id"))
        configs = decode_configs(meta, args.threshold, vocab_size=model_cfg.vocab_size, mask_id=mask_id,
                                 gen_length=args.gen_length, block_length=args.block_length,
                                 steps=args.steps if args.steps is not None else args.block_length,
                                 minimal_topk=args.minimal_topk, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, eos_id=eos, eos_early_stop=not args.no_eos_early_stop,
                                 use_cache=not args.no_cache, fuse_commit=not args.separate_commits,
                                 seed=args.seed)
        prompts = [(text, tok.encode(text)) for text in prompts_text]
        prompts += [(None, [int(t) for t in ids.split()]) for ids in args.prompt_ids]
        for text, ids in prompts:
            check_prompt(ids, args.gen_length, model_cfg.vocab_size, max_positions(model_cfg),
                         label=text if text is not None else " ".join(map(str, ids)))
        is_ar = resolve_decoder(meta, args.decoder) == "ar"
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    device = setup_device(None if args.device == "auto" else args.device)
    init_process_group(device)
    import torch.distributed as dist

    try:
        from megatron_dllm.generate.ar_decoding import greedy_ar
        from megatron_dllm.generate.decoding import decode
        from megatron_dllm.generate.kv_cache import DecodeCache, attach
        from megatron_dllm.generate.loading import full_vocab_forward, load_for_inference

        model, model_cfg, meta = load_for_inference(args.load, parallel, device, args.dllm_attention_backend)
        forward = full_vocab_forward(model, model_cfg.vocab_size)
        if is_ar and dist.get_rank() == 0 and not args.json:
            print("note: greedy next-token decoding", file=sys.stderr)
        rank0 = dist.get_rank() == 0
        if is_ar:
            configs = configs[:1]  # greedy: the threshold does not apply
        for cfg, (text, ids) in ((c, p) for c in configs for p in prompts):
            cache = DecodeCache() if cfg.use_cache else None
            attach(model, cache)
            if is_ar:
                out = greedy_ar(ids, forward, cfg.gen_length, eos_id=eos, device=device, cache=cache)
            else:
                out = decode(ids, forward, cfg, device=device, cache=cache)
            attach(model, None)
            if not rank0:
                continue
            completion = tok.decode(out.tokens) if tok else " ".join(map(str, out.tokens))
            record = {"prompt": text if text is not None else ids, "text": completion, "tokens": out.tokens,
                      "num_tokens": len(out.tokens), "num_forward_passes": out.num_forward_passes,
                      "model_calls": out.model_calls, "tokens_per_forward": out.tokens_per_forward,
                      "seconds": round(out.seconds, 4), "decoder": "ar" if is_ar else "diffusion",
                      "threshold": None if is_ar else cfg.threshold}
            print(json.dumps(record) if args.json else completion, flush=True)
    except (ConfigError, DataError, ValueError) as exc:
        if dist.get_rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        teardown()
        return 2
    teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
