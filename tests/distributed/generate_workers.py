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


def training_rows_worker(rank, world_size):
    """Max |decoding slot logits - training-layout logits| per (token_shift, clean_stream, cache)."""
    import torch

    from megatron_dllm.diffusion import alignment, masks
    from megatron_dllm.generate.decoding import DecodeConfig, block_logits
    from megatron_dllm.generate.kv_cache import DecodeCache, attach
    from megatron_dllm.generate.loading import full_vocab_forward
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    parallel = ParallelConfig()
    init_model_parallel(parallel)
    model = build_model(get_preset("tiny-moe"), parallel, init_seed=5).eval()
    forward = full_vocab_forward(model, 254)
    LB, L = 8, 24                                      # decoding the third block, two clean ones before
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 254, (1, L), generator=g)
    state = clean.clone()
    state[0, 16:] = torch.where(torch.rand(LB, generator=g) < 0.6, MASK, clean[0, 16:])
    state[0, 16] = MASK                                # the block's first slot is masked
    out = {}
    for token_shift in (False, True):
        for clean_stream in ("block_causal", "causal"):
            kind = "block_diffusion_causal_clean" if clean_stream == "causal" else "block_diffusion"
            xt_x0 = torch.cat([state, clean], dim=1)   # xt: only block 2 matters to its rows
            positions = torch.cat([torch.arange(L), torch.arange(L)])[None]
            with torch.no_grad():
                train = forward(xt_x0, positions, masks.dense_mask(kind, L, LB))[0]
            rows = alignment.token_shift_rows(L, LB, two_streams=True) if token_shift else torch.arange(L)
            expected = train[rows[16:]]
            for use_cache in (True, False):
                cfg = DecodeConfig(mask_id=MASK, gen_length=L - 3, block_length=LB, steps=LB,
                                   token_shift=token_shift, clean_stream=clean_stream, use_cache=use_cache)
                cache = DecodeCache() if use_cache else None
                attach(model, cache)
                got = block_logits(state, 16, L, forward, cfg, cache=cache)
                attach(model, None)
                out[(token_shift, clean_stream, use_cache)] = float((got - expected).abs().max())
    return out
