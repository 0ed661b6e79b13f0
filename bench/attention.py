"""Benchmark 1: block-diffusion attention on the [xt ; x0] layout, forward + backward.

Variants (same q / k / v, same BD + document mask, batch 1):
    ours        DiffusionCoreAttention, its device default: SDPA + our cached bool mask on CPU,
                compiled FlexAttention + block-sparse BlockMask on CUDA.
    ours_sdpa   (CUDA only) DiffusionCoreAttention with backend sdpa (dense bool mask).
    mcore       megatron-core's local DotProductAttention (AttnMaskType.arbitrary, mask True = masked
                out), unfused softmax: what a Megatron user without Transformer Engine gets.
    sdpa_dense  what peers do (dFactory): SDPA with a dense additive float mask (0 / -inf) of
                [1, 1, 2L, 2L], built from index tensors inside every call.

Each sequence length runs in a fresh worker process (``--worker``): peak memory per variant, then
interleaved timing rounds. Memory = peak during one fwd+bwd minus memory just before it (the inputs,
the upstream gradient and the prebuilt masks are already allocated). CPU: the variant's first call,
RSS high-water mark. CUDA: a warm call (the first compiles) plus what the variant keeps allocated
between calls (megatron-core's global score buffer). See common.py.

    python bench/attention.py --seq 1024 2048 4096 --heads 4 --groups 1       # CPU table
    python bench/attention.py --device cuda --seq 1024 2048 4096 8192 --heads 16 --groups 4
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

GOAL_TIME = 3.0      # ours >= 3x faster than mcore at the largest CPU length (4096)
GOAL_MEMORY = 4.0    # ours >= 4x less peak memory than mcore there
GOAL_FLEX = 2.5      # CUDA: block-sparse Flex >= 2.5x faster than dense-mask SDPA at 2L = 8192


def document_ids(L: int):
    """[1, L] ids of three packed documents (boundaries at 30% and 75% of the window)."""
    import torch

    docs = torch.zeros(1, L, dtype=torch.long)
    docs[:, int(0.30 * L):] = 1
    docs[:, int(0.75 * L):] = 2
    return docs


def _init_parallel(device: str) -> None:
    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_model_parallel, init_process_group

    setup_device(device)
    init_process_group(device)
    init_model_parallel(ParallelConfig())


def _config(heads: int, groups: int, head_dim: int, bf16: bool):
    """A one-layer TransformerConfig for the attention modules (unfused softmax: the fused kernel
    is a Megatron-LM extension that the megatron-core wheel does not ship)."""
    import torch
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
        num_query_groups=groups, kv_channels=head_dim, attention_dropout=0.0, hidden_dropout=0.0,
        masked_softmax_fusion=False, bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=True,
    )


def _prototype_variants(allowed, heads, rep, head_dim, scale, dtype) -> dict:
    """Fixes proposed for the package, measured here (prototypes.py; CPU only, not used for goals).

    proto_float_mask  SDPA with a cached additive float mask instead of the cached bool mask (SDPA
                      turns a bool mask into a float one inside every call).
    proto_tiled       block-sparse SDPA: skips key tiles with no allowed pair (prototypes.py).
    """
    import torch
    import torch.nn.functional as F

    from prototypes import TiledSparseSDPA

    S = allowed.shape[-1]
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))[:, None]
    tiled = TiledSparseSDPA(allowed, tile=256 if S % 256 == 0 else S, dtype=dtype)

    def layout(q, k, v):
        qq, kk, vv = (x.permute(1, 2, 0, 3) for x in (q, k, v))
        return qq, kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1)

    def float_mask(q, k, v):
        qq, kk, vv = layout(q, k, v)
        out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=additive, scale=scale)
        return out.permute(2, 0, 1, 3).reshape(S, 1, heads * head_dim)

    def tiled_fn(q, k, v):
        out = tiled(*layout(q, k, v), scale)
        return out.permute(2, 0, 1, 3).reshape(S, 1, heads * head_dim)

    mask_mib = {"proto_float_mask": additive.numel() * additive.element_size() / 2 ** 20,
                "proto_tiled": sum(m.numel() * m.element_size() for _, m in tiled.plan if m is not None) / 2 ** 20}
    return {"proto_float_mask": float_mask, "proto_tiled": tiled_fn}, mask_mib


def build_variants(S: int, heads: int, groups: int, head_dim: int, block: int, device: str,
                   prototypes: bool = False):
    """The variants of one length and what the worker needs around them.

    Returns (variants: name -> fn(q, k, v) -> out, persistent: name -> fn() -> MiB the variant keeps
    allocated between calls, dense_float_mask: fn() building sdpa_dense's mask, allowed: the cached
    bool mask [1, S, S], mask_mib: name -> MiB of the variant's prebuilt mask).
    """
    import torch
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_dllm.diffusion import masks
    from megatron_dllm.model.core_attention import DiffusionCoreAttention

    L = S // 2
    bf16 = device == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    cfg = _config(heads, groups, head_dim, bf16)
    docs = document_ids(L)
    allowed = masks.block_diffusion_mask(L, block, docs, device=device)   # [1, S, S] cached
    mcore_mask = ~allowed[:, None]                                          # [1, 1, S, S] True = out
    docs_dev = docs.to(device)

    def dense_float_mask():
        idx = torch.arange(S, device=device)
        ok = masks.make_mask_mod("block_diffusion", L, block, docs_dev)(
            torch.zeros(1, 1, 1, dtype=torch.long, device=device), None,
            idx.view(1, S, 1), idx.view(1, 1, S))
        return torch.zeros(1, 1, S, S, dtype=dtype, device=device).masked_fill_(~ok[:, None], float("-inf"))

    rep = heads // groups
    scale = 1.0 / head_dim ** 0.5

    def sdpa_dense(q, k, v):
        add = dense_float_mask()
        qq, kk, vv = (x.permute(1, 2, 0, 3) for x in (q, k, v))
        kk, vv = kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1)
        out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=add, scale=scale)
        return out.permute(2, 0, 1, 3).reshape(S, 1, heads * head_dim)

    ours_default = "flex" if device == "cuda" else "sdpa"
    variants = {}
    ours = DiffusionCoreAttention(cfg, 1, AttnMaskType.arbitrary, "self", backend=ours_default).to(device)
    ours_mask = (masks.flex_block_mask("block_diffusion", L, block, docs, device=device)
                 if ours_default == "flex" else allowed)
    variants["ours"] = lambda q, k, v: ours(q, k, v, ours_mask)
    if device == "cuda":
        ours_sdpa = DiffusionCoreAttention(cfg, 1, AttnMaskType.arbitrary, "self", backend="sdpa").to(device)
        variants["ours_sdpa"] = lambda q, k, v: ours_sdpa(q, k, v, allowed)
    variants["sdpa_dense"] = sdpa_dense
    mcore = DotProductAttention(cfg, 1, AttnMaskType.arbitrary, "self").to(device)
    variants["mcore"] = lambda q, k, v: mcore(q, k, v, mcore_mask)
    mask_mib = {"ours": allowed.numel() * allowed.element_size() / 2 ** 20, "sdpa_dense": 0.0,
                "mcore": mcore_mask.numel() * mcore_mask.element_size() / 2 ** 20}
    if device == "cuda":
        mask_mib["ours_sdpa"] = mask_mib["ours"]
        mask_mib["ours"] = sum(t.numel() * t.element_size() for t in ours_mask.as_tuple()
                               if isinstance(t, torch.Tensor)) / 2 ** 20
    if prototypes and device == "cpu":
        protos, proto_masks = _prototype_variants(allowed, heads, rep, head_dim, scale, dtype)
        variants.update(protos)
        mask_mib.update(proto_masks)

    def mcore_persistent_mib() -> float:
        buf = parallel_state.get_global_memory_buffer().buffer
        return sum(t.numel() * t.element_size() for t in buf.values()) / 2 ** 20

    persistent = {name: (lambda: 0.0) for name in variants}
    persistent["mcore"] = mcore_persistent_mib
    return variants, persistent, dense_float_mask, allowed, mask_mib


def prepare_process(device: str, threads: int) -> None:
    """A fresh benchmark process: quiet, eager memory release on CPU, ``threads`` torch threads (0 =
    torch's default), the process group and one-rank model parallelism."""
    warnings.filterwarnings("ignore")
    if device == "cpu":
        common.release_freed_memory_eagerly()
    import torch

    if threads:
        torch.set_num_threads(threads)
    _init_parallel(device)


def worker(args) -> dict:
    """One sequence length in this (fresh) process: memory, then interleaved timing."""
    device = args.device
    prepare_process(device, args.threads)
    import torch

    S = args.seq[0]
    variants, persistent, dense_float_mask, allowed, mask_mib = build_variants(
        S, args.heads, args.groups, args.head_dim, args.block, device, args.prototypes)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(S, 1, args.heads, args.head_dim, generator=gen).to(device, dtype).requires_grad_()
    k = torch.randn(S, 1, args.groups, args.head_dim, generator=gen).to(device, dtype).requires_grad_()
    v = torch.randn(S, 1, args.groups, args.head_dim, generator=gen).to(device, dtype).requires_grad_()
    grad_out = torch.randn(S, 1, args.heads * args.head_dim, generator=gen).to(device, dtype)
    leaves = (q, k, v)

    def clear():
        for x in leaves:
            x.grad = None

    outputs = {}

    def step_fn(name):
        def step():
            out = variants[name](q, k, v)
            out.backward(grad_out)
            return out
        return step

    steps = {name: step_fn(name) for name in variants}
    # CPU: the variant's first call in this process (RSS counts only pages a call touches, so memory
    # allocated but never written, like megatron-core's score buffer that baddbmm(beta=0) ignores, costs
    # nothing there). CUDA: a warm call (the first compiles), plus the bytes the variant keeps allocated
    # between calls, which the allocator counts whether touched or not.
    memory = {}
    for name, step in steps.items():
        if device == "cuda":
            outputs[name] = step().detach().float().cpu()
            clear()
        with common.peak_memory(device) as pm:
            out = step()
        if device != "cuda":
            outputs[name] = out.detach().float().cpu()
        del out
        clear()
        keep = persistent[name]()
        counted = keep if device == "cuda" else 0.0
        memory[name] = {"added_mib": round(pm.added_mib + counted, 1), "call_mib": round(pm.added_mib, 1),
                        "kept_between_calls_mib": round(keep, 1), "kept_counted": device == "cuda",
                        "peak_process_mib": round(pm.peak_mib, 1),
                        "prebuilt_mask_mib": round(mask_mib.get(name, 0.0), 1),
                        "peak_reset_ok": pm.reset_ok}
    ref = outputs["ours"]
    max_diff = {name: float((out - ref).abs().max()) for name, out in outputs.items() if name != "ours"}
    times = common.interleaved(steps, rounds=args.rounds, warmup=0, device=device,
                               after_each=lambda name: clear())
    mask_build = common.interleaved({"dense_float_mask": dense_float_mask}, rounds=args.rounds,
                                    warmup=1, device=device)["dense_float_mask"]
    density = float(allowed.float().mean())
    ratios = {
        "time_mcore_over_ours": round(common.paired_ratio(times["mcore"], times["ours"]), 3),
        "time_sdpa_dense_over_ours": round(common.paired_ratio(times["sdpa_dense"], times["ours"]), 3),
        "mem_mcore_over_ours": round(memory["mcore"]["added_mib"] / max(memory["ours"]["added_mib"], 1e-3), 2),
        "mem_sdpa_dense_over_ours": round(memory["sdpa_dense"]["added_mib"]
                                          / max(memory["ours"]["added_mib"], 1e-3), 2),
    }
    for proto in ("proto_float_mask", "proto_tiled"):
        if proto in times:
            ratios[f"time_mcore_over_{proto}"] = round(common.paired_ratio(times["mcore"], times[proto]), 3)
            ratios[f"time_ours_over_{proto}"] = round(common.paired_ratio(times["ours"], times[proto]), 3)
            ratios[f"mem_mcore_over_{proto}"] = round(memory["mcore"]["added_mib"]
                                                      / max(memory[proto]["added_mib"], 1e-3), 2)
    if "ours_sdpa" in times:
        ratios["time_ours_sdpa_over_ours"] = round(common.paired_ratio(times["ours_sdpa"], times["ours"]), 3)
        ratios["mem_ours_sdpa_over_ours"] = round(memory["ours_sdpa"]["added_mib"]
                                                  / max(memory["ours"]["added_mib"], 1e-3), 2)
    return {
        "seq_2L": S, "L": S // 2, "device": device, "dtype": str(dtype).replace("torch.", ""),
        "mask_density": round(density, 4),
        "time_s": {name: common.summary(ts) for name, ts in times.items()},
        "memory": memory, "ratios": ratios,
        "dense_float_mask_build_s": common.summary(mask_build),
        "max_abs_diff_vs_ours": {k: round(v, 6) for k, v in max_diff.items()},
        "threads": torch.get_num_threads(),
    }


def run(seqs, heads=4, groups=1, head_dim=128, block=32, rounds=3, device="cpu", threads=0,
        prototypes=False, timeout=1800, deadline=None) -> dict:
    """Run one worker per length; gather the table, ratios and goals.

    ``deadline`` (time.monotonic() value): skip lengths once it has passed, and cap each worker's
    timeout at the time left (the GPU script's overall budget).
    """
    import time

    per_seq = []
    for S in seqs:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left < 20:
                per_seq.append({"seq_2L": S, "status": "failed", "error": "skipped: time budget spent"})
                continue
            timeout = min(timeout, left)
        common.log(f"attention 2L={S} ({heads}q/{groups}kv heads x {head_dim}, {rounds} rounds, {device})")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--seq", str(S), "--heads", str(heads),
               "--groups", str(groups), "--head-dim", str(head_dim), "--block", str(block),
               "--rounds", str(rounds), "--device", device, "--threads", str(threads)]
        if prototypes:
            cmd.append("--prototypes")
        res = common.run_json(cmd, timeout=timeout)
        if res.get("status") == "failed":
            common.log(f"attention 2L={S} failed: {res.get('error') or res.get('stderr_tail', '')[-500:]}")
            res["seq_2L"] = S
        per_seq.append(res)
    per_seq.sort(key=lambda r: r["seq_2L"])
    out = {
        "config": {"prototypes": prototypes, "heads": heads, "kv_groups": groups, "head_dim": head_dim, "batch": 1, "block_size": block,
                   "documents_per_window": 3, "rounds": rounds, "device": device,
                   "memory_metric": (
                       "CPU: resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) during "
                       "the variant's first fwd+bwd in a fresh process, minus RSS before it (inputs, "
                       "upstream gradient and prebuilt masks already allocated)" if device == "cpu" else
                       "CUDA: max_memory_allocated during a warm fwd+bwd minus memory_allocated before it, "
                       "plus what the variant keeps allocated between calls (megatron-core's global score "
                       "buffer)")},
        "per_seq": per_seq,
    }
    out["ratios"] = {str(r["seq_2L"]): r.get("ratios") for r in per_seq}
    out["goals"] = goals(out, device)
    return out


def goals(result: dict, device: str) -> list:
    """Goal rows at the largest measured length (CPU: 4096; CUDA: flex vs dense SDPA at 8192)."""
    rows = []
    ok = [r for r in result["per_seq"] if "ratios" in r]
    if not ok:
        return rows
    if device == "cpu":
        target = [r for r in ok if r["seq_2L"] == 4096] or [max(ok, key=lambda r: r["seq_2L"])]
        r = target[0]
        t, m = r["ratios"]["time_mcore_over_ours"], r["ratios"]["mem_mcore_over_ours"]
        rows.append({"goal": f"CPU BD attention 2L={r['seq_2L']}: ours >= {GOAL_TIME}x faster than mcore local",
                     "measured": f"{t:.2f}x", "met": t >= GOAL_TIME})
        rows.append({"goal": f"CPU BD attention 2L={r['seq_2L']}: ours >= {GOAL_MEMORY}x less peak memory than "
                             "mcore local", "measured": f"{m:.2f}x", "met": m >= GOAL_MEMORY})
    else:
        target = [r for r in ok if r["seq_2L"] == 8192]
        if target:
            r = target[0]["ratios"]
            flex_vs_dense = min(r["time_sdpa_dense_over_ours"], r.get("time_ours_sdpa_over_ours", 1e9))
            rows.append({"goal": f"CUDA 2L=8192: block-sparse Flex >= {GOAL_FLEX}x faster than dense-mask SDPA",
                         "measured": f"{flex_vs_dense:.2f}x (vs bool-mask SDPA "
                                     f"{r.get('time_ours_sdpa_over_ours', float('nan')):.2f}x, vs float-mask "
                                     f"SDPA {r['time_sdpa_dense_over_ours']:.2f}x)",
                         "met": flex_vs_dense >= GOAL_FLEX})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096], help="2L values")
    p.add_argument("--heads", type=int, default=4, help="query heads (per TP rank)")
    p.add_argument("--groups", type=int, default=1, help="key/value heads (per TP rank)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block", type=int, default=32, help="BD block size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--prototypes", action="store_true",
                   help="CPU: also time the proposed fixes in prototypes.py (not used for goals)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help="also write the result to this file")
    args = p.parse_args(argv)
    if args.worker:
        common.emit_json(worker(args))
        return 0
    res = run(args.seq, args.heads, args.groups, args.head_dim, args.block, args.rounds, args.device,
              args.threads, args.prototypes)
    if args.json_out:
        common.write_json(args.json_out, res)
    import report

    print(report.attention_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
