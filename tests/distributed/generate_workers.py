"""Decoding on a tiny random MoE dLLM in one spawned rank (CPU backend applied)."""

from __future__ import annotations

from megatron_dllm.config import ParallelConfig
from megatron_dllm.model.presets import get_preset

MASK = 255


def decoding_worker(rank, world_size):
    from megatron_dllm.generate.ar_decoding import greedy_ar
    from megatron_dllm.generate.decoding import DecodeConfig, decode
    from megatron_dllm.generate.kv_cache import DecodeCache, attach
    from megatron_dllm.generate.loading import full_vocab_forward
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    parallel = ParallelConfig()
    init_model_parallel(parallel)
    cfg = get_preset("tiny-moe")
    model = build_model(cfg, parallel, init_seed=3).eval()
    forward = full_vocab_forward(model, 254)
    out = {"tpf": {}}
    out["variants"] = {}
    variants = [(False, "block_causal"), (True, "block_causal"), (False, "causal"), (True, "causal")]
    for token_shift, clean_stream in variants:
        rows = []
        for prompt in ([1, 2, 3], list(range(10, 26)), list(range(40, 61))):  # partial, whole, partial blocks
            runs = {}
            for use_cache, fuse in ((True, True), (True, False), (False, True)):
                dcfg = DecodeConfig(mask_id=MASK, gen_length=20, block_length=8, steps=8, threshold=0.9,
                                    use_cache=use_cache, fuse_commit=fuse, token_shift=token_shift,
                                    clean_stream=clean_stream)
                cache = DecodeCache() if use_cache else None
                attach(model, cache)
                res = decode(prompt, forward, dcfg, cache=cache)
                attach(model, None)
                runs[(use_cache, fuse)] = (res.tokens, res.num_forward_passes, res.num_cache_passes)
            rows.append(runs)
        out["variants"][(token_shift, clean_stream)] = rows
    for threshold in (1.0, 0.0):
        dcfg = DecodeConfig(mask_id=MASK, gen_length=24, block_length=8, steps=8, threshold=threshold,
                            use_cache=True)
        cache = DecodeCache()
        attach(model, cache)
        res = decode([7, 8, 9, 10, 11, 12, 13, 14], forward, dcfg, cache=cache)
        attach(model, None)
        out["tpf"][threshold] = (res.tokens_per_forward, res.num_forward_passes, len(res.tokens))
    out["ar"] = []
    for prompt in ([5], [1, 2, 3], list(range(10, 30))):
        runs = {}
        for use_cache in (True, False):
            cache = DecodeCache() if use_cache else None
            attach(model, cache)
            runs[use_cache] = greedy_ar(prompt, forward, 12, cache=cache)
            attach(model, None)
        out["ar"].append((runs[True].tokens, runs[False].tokens, runs[True].num_forward_passes))
    return out
