"""Benchmark 2: training-step cost of the diffusion layouts against the AR objective.

One model, built through the normal run set-up (``parse_args`` -> ``check_run`` -> ``setup_run`` with
``--mock-data``), runs optimizer steps of three layouts on the same number of clean tokens per step
(global batch B x L):

    ar    the causal AR objective: input x0 (L), block-causal(1) + document mask, next-token loss;
    mdlm  the stable phase (block = L): input xt (L), bidirectional document mask;
    bd    a block-diffusion phase (block < L): input [xt ; x0] (2L), BD + document mask.

The AR step runs on the dLLM-built model: a model built with ``--dllm-objective ar`` differs only in
``attn_mask_type=causal``, which our core attention uses for nothing but allowing a missing mask, and
the AR layout always passes its mask, so the computation is the same.

Steps are interleaved (ar, mdlm, bd in an order rotated per round); every step reads the next global
batch, so documents (and therefore the masks) change every step, as in training. Separately, on the
same micro-batches, ``prepare_inputs`` (noise + layout + mask) is timed with a cold mask cache; its
share of the step time is the noise + mask overhead.

On CUDA it also reports model FLOPs per step and MFU (``--model gpu-1b``, a ~1B-active MoE); the FLOP
count comes from the parameter counts of the model built on the meta device:

    FLOPs = 6 * (N_trunk * T_in + N_out * B * L) + 12 * layers * d_attn * pairs * B

N_trunk = active parameters without embedding and output layer, T_in = tokens through the trunk
(B*L, or 2*B*L for bd), N_out = output-layer parameters (logits are needed for the L loss positions
only), d_attn = query heads x head dim, pairs = (query, key) pairs the mask allows per sample without
documents: L(L+1)/2 (ar), L^2 (mdlm), L^2 + L*block (bd).

    python bench/step_overhead.py                       # CPU, tiny-but-not-trivial MoE
    python bench/step_overhead.py --device cuda --model gpu-1b
    python bench/step_overhead.py --device cuda --model gpu-1b --dry-run   # FLOPs only; works on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

GOAL_MDLM = 1.03
GOAL_BD = 2.1
GOAL_SHARE = 0.02

# Model flags on top of a preset. "cpu-moe": 4 layers, hidden 256, 8 experts top-2 (+ shared
# expert), vocabulary 8192 so the output layer's share of the FLOPs (~27%) is close to LLaDA2.0-mini's.
MODELS = {
    "cpu-moe": ["--preset", "tiny-moe", "--num-layers", "4", "--hidden-size", "256",
                "--ffn-hidden-size", "1024", "--num-attention-heads", "4", "--num-query-groups", "2",
                "--kv-channels", "64", "--vocab-size", "8192", "--make-vocab-size-divisible-by", "128",
                "--moe-ffn-hidden-size", "512", "--moe-shared-expert-intermediate-size", "512"],
    # LLaDA2.0-mini's layer shapes (hidden 2048, 16 q / 4 kv heads x 128, sigmoid router with expert
    # bias, shared expert, first layer dense, Ling vocabulary) cut to 8 layers and 32 experts top-4:
    # ~2.2B total, ~1.0B active parameters, so weights + Adam state fit one 80 GB GPU.
    "gpu-1b": ["--preset", "llada2.0-mini", "--num-layers", "8", "--num-experts", "32",
               "--moe-ffn-hidden-size", "1024", "--moe-shared-expert-intermediate-size", "1024",
               "--moe-router-topk", "4", "--moe-router-num-groups", "8", "--moe-router-group-topk", "4"],
}
# The same model on Transformer Engine's layers (fused norm + linear, grouped-GEMM experts), our
# core attention in both: bench/gpu.sh compares its step time / MFU with the local layers.
MODELS["gpu-1b-te"] = MODELS["gpu-1b"] + ["--transformer-impl", "transformer_engine", "--moe-grouped-gemm"]

# Dense bf16 tensor-core peak (FLOP/s) by GPU name substring; first match wins.
PEAK_BF16 = [
    ("H200", 989e12), ("GH200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("A10G", 70e12), ("RTX 4090", 165e12),
]


def peak_flops(name: str):
    for key, value in PEAK_BF16:
        if key.lower() in (name or "").lower():
            return value
    return None


def run_argv(model: str, L: int, mbs: int, gbs: int, iters: int, device: str, block: int) -> list:
    argv = list(MODELS[model]) + [
        "--seq-length", str(L), "--max-position-embeddings", str(L), "--mock-data",
        "--device", device, "--dllm-objective", "bd", "--dllm-block-schedule", f"stable:{block}@inf",
        "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs), "--train-iters", str(iters),
        "--log-interval", "1000000", "--lr", "1e-4", "--min-lr", "1e-5", "--seed", "1234",
        "--split", "100,0,0",
    ]
    if device == "cuda":
        argv += ["--bf16"]
    return argv


def attention_pairs(layout: str, L: int, block: int) -> int:
    if layout == "ar":
        return L * (L + 1) // 2
    if layout == "mdlm":
        return L * L
    return L * L + L * block


def flops_per_step(counts: dict, model_cfg, layout: str, L: int, B: int, block: int) -> dict:
    """Model FLOPs of one optimizer step (forward + backward) of ``layout`` on B x L clean tokens."""
    hidden = model_cfg.hidden_size
    n_out = model_cfg.padded_vocab_size(1) * hidden
    n_emb = counts["embedding_params"] - (n_out if model_cfg.untie_embeddings_and_output_weights else 0)
    n_trunk = counts["active_params"] - n_emb - (n_out if model_cfg.untie_embeddings_and_output_weights else 0)
    t_in = (2 if layout == "bd" else 1) * B * L
    d_attn = model_cfg.num_attention_heads * model_cfg.head_dim
    dense = 6 * (n_trunk * t_in + n_out * B * L)
    attn = 12 * model_cfg.num_layers * d_attn * attention_pairs(layout, L, block) * B
    return {"total": dense + attn, "linear": dense, "attention": attn, "trunk_params": n_trunk,
            "output_params": n_out, "tokens_in": t_in}


def count_model(model_cfg) -> dict:
    """Parameter counts from the model built on the meta device (needs a process group)."""
    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.model.info import count_parameters
    from megatron_dllm.platform.distributed import init_model_parallel

    init_model_parallel(ParallelConfig())
    model = build_model(model_cfg, ParallelConfig(), meta=True)
    return count_parameters(model, model_cfg)


def _time_prepare(objective, setup, block: int, batches) -> dict:
    """Cold-cache seconds of prepare_inputs over a step's micro-batches, and of its two parts."""
    from megatron_dllm.diffusion import masks
    from megatron_dllm.objectives import StepContext

    layout = objective.layout
    step = StepContext(iteration=setup.state.iteration, block_size=block)
    kind = {"ar": "block_causal", "mdlm": "bidirectional", "bd": "block_diffusion"}[layout]
    mask_block = {"ar": 1, "mdlm": None, "bd": block}[layout]
    device = setup.device
    out = {"prepare": 0.0, "noise": 0.0, "mask": 0.0}
    for batch in batches:
        masks.clear_mask_cache()
        out["prepare"] += common.timed(lambda: objective.prepare_inputs(batch, step), device)
        if layout != "ar":
            out["noise"] += common.timed(lambda: objective._noise(batch, step), device)
        masks.clear_mask_cache()
        out["mask"] += common.timed(lambda: objective.attention_mask(kind, mask_block, batch["document_ids"]),
                                    device)
    masks.clear_mask_cache()
    return out


def half_logits_switch(setup, L: int) -> dict:
    """Prototype of a fix (not package code): the output layer sees only the noisy half [:L].

    A forward pre-hook on the output layer slices the hidden states ``[2L, b, h]`` to ``[L, b, h]``
    while ``switch["on"]`` is True, so the BD step computes logits (and their backward) for the L
    loss positions only; the loss already reads ``logits[:, :L]``, so nothing else changes.
    """
    switch = {"on": False}
    module = setup.model[0].module if hasattr(setup.model[0], "module") else setup.model[0]

    def pre_hook(_module, args, kwargs):
        if switch["on"]:
            args = (args[0][:L],) + tuple(args[1:])
        return args, kwargs

    module.output_layer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return switch


def worker(args) -> dict:
    warnings.filterwarnings("ignore")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown
    from megatron_dllm.train.preflight import check_run

    L, mbs, gbs, block = args.seq_length, args.micro_batch_size, args.global_batch_size, args.block
    layouts = ["ar", "mdlm", "bd"] + (["bd_half_logits"] if args.prototypes else [])
    blocks = {"ar": 1, "mdlm": L, "bd": block, "bd_half_logits": block}
    real = {"bd_half_logits": "bd"}  # prototype variant -> the layout it runs
    iters = (args.warmup + args.rounds) * len(layouts) + 4
    run = parse_args(run_argv(args.model, L, mbs, gbs, iters, args.device, block))
    # A dry run only counts FLOPs: it runs on CPU (with the CPU shims) when CUDA is absent.
    cuda_ok = torch.cuda.is_available()
    device = setup_device("cpu" if args.dry_run and not cuda_ok else args.device)
    init_process_group(device)
    import torch.distributed as dist

    check_run(run, dist.get_world_size())
    counts = count_model(run.model)
    flops = {lay: flops_per_step(counts, run.model, real.get(lay, lay), L, gbs, blocks[lay]) for lay in layouts}
    result = {
        "model": args.model, "model_flags": MODELS[args.model], "seq_length": L, "micro_batch_size": mbs,
        "global_batch_size": gbs, "clean_tokens_per_step": gbs * L, "bd_block_size": block,
        "device": args.device, "ran_on": device, "params": counts,
        "flops_per_step": {lay: f["total"] for lay, f in flops.items()},
        "flops_detail": flops,
    }
    gpu_name = torch.cuda.get_device_name(0) if (device == "cuda" and torch.cuda.is_available()) else None
    peak = peak_flops(gpu_name) if gpu_name else None
    result["gpu"] = gpu_name
    result["peak_bf16_flops"] = peak
    if args.dry_run:
        result["dry_run"] = True
        teardown()
        return result

    from megatron_dllm.data.microbatches import micro_batches
    from megatron_dllm.model.core_attention import resolve_backend
    from megatron_dllm.objectives import objective_type
    from megatron_dllm.train import loop
    from megatron_dllm.train.engine import data_parallel
    from megatron_dllm.train.setup import setup_run

    t0 = time.perf_counter()
    setup = setup_run(run, device)
    # the AR layout timed on the same (block-diffusion) model and data
    ar = objective_type("ar").from_run(run, setup.mask_token_id, device,
                                       resolve_backend(run.diffusion.attention_backend, device))
    objectives = {lay: ar if lay == "ar" else setup.objective.at_block(blocks[lay]) for lay in layouts}
    result["setup_s"] = round(time.perf_counter() - t0, 1)
    prep = {lay: {"prepare": [], "noise": [], "mask": []} for lay in layouts}
    losses = {lay: [] for lay in layouts}
    switch = half_logits_switch(setup, L) if args.prototypes else None

    def step_fn(variant):
        def step():
            if switch is not None:
                switch["on"] = variant == "bd_half_logits"
            try:
                out = loop.run_step(setup, objectives[variant], blocks[variant])
            finally:
                if switch is not None:
                    switch["on"] = False
            losses[variant].append(out["totals"]["loss_sum"] / max(out["totals"]["num_tokens"], 1.0))
        return step

    def after(variant):
        # Same micro-batches the step just used (cold mask cache), then advance to the next batch.
        objective = objectives[variant]
        batches = micro_batches(setup.datasets[0], setup.state.consumed_samples, gbs, objective.micro_batch_size,
                                *data_parallel())
        for key, value in _time_prepare(objective, setup, blocks[variant], batches).items():
            prep[variant][key].append(value)
        setup.state.iteration += 1
        setup.state.consumed_samples += gbs

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fns = {lay: step_fn(lay) for lay in layouts}
    common.interleaved(fns, rounds=0, warmup=args.warmup, device=device, after_each=after)
    for lay in layouts:  # drop the warm-up rounds' preparation timings
        for key in prep[lay]:
            prep[lay][key] = []
    times = {lay: [] for lay in layouts}
    for r in range(args.rounds):
        one = common.interleaved(fns, rounds=1, warmup=0, device=device, after_each=after,
                                 first_round=args.warmup + r)
        for lay in layouts:
            times[lay] += one[lay]
        # Results so far, printed after every round: a run cut short by a time limit still reports.
        common.emit_json(_summarise(result, times, prep, losses, flops, peak, layouts, gbs, L, device,
                                    args.prototypes))
    result = _summarise(result, times, prep, losses, flops, peak, layouts, gbs, L, device, args.prototypes)
    setup.logger.close()
    teardown()
    return result


def _summarise(result, times, prep, losses, flops, peak, layouts, gbs, L, device, prototypes) -> dict:
    """Result dict with the statistics of the rounds timed so far."""
    import torch

    result = dict(result)
    result["step_s"] = {lay: common.summary(ts) for lay, ts in times.items()}
    result["step_s_raw"] = {lay: [round(t, 4) for t in ts] for lay, ts in times.items()}
    result["prepare_s"] = {lay: {k: common.summary(v) for k, v in d.items()} for lay, d in prep.items()}
    result["loss_last"] = {lay: round(v[-1], 4) for lay, v in losses.items() if v}

    def spread(num, den):
        rs = [a / b for a, b in zip(times[num], times[den])]
        return {"median": round(common.median(rs), 3), "min": round(min(rs), 3), "max": round(max(rs), 3),
                "fastest_over_fastest": round(min(times[num]) / min(times[den]), 3)}

    result["ratios"] = {
        "mdlm_over_ar": spread("mdlm", "ar")["median"],
        "bd_over_ar": spread("bd", "ar")["median"],
        "noise_mask_share_bd": round(common.paired_ratio(prep["bd"]["prepare"], times["bd"]), 4),
        "noise_mask_share_mdlm": round(common.paired_ratio(prep["mdlm"]["prepare"], times["mdlm"]), 4),
        "mask_share_ar": round(common.paired_ratio(prep["ar"]["prepare"], times["ar"]), 4),
    }
    result["ratio_spread"] = {"mdlm_over_ar": spread("mdlm", "ar"), "bd_over_ar": spread("bd", "ar")}
    if prototypes:
        result["prototype"] = {
            "bd_half_logits_over_ar": spread("bd_half_logits", "ar"),
            "bd_half_logits_over_bd": spread("bd_half_logits", "bd"),
            "note": "bd step with the output layer restricted to the noisy half (forward pre-hook; not "
                    "package code); not used for goals",
        }
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    if peak:
        result["mfu"] = {lay: round(flops[lay]["total"] / common.median(times[lay]) / peak, 4) for lay in layouts}
    result["tokens_per_s"] = {lay: round(gbs * L / common.median(times[lay]), 1) for lay in layouts}
    result["threads"] = torch.get_num_threads()
    return result


def goals(res: dict) -> list:
    if "ratios" not in res:
        return []
    r = res["ratios"]
    dev = res.get("device", "cpu").upper()
    return [
        {"goal": f"{dev} step: MDLM phase / AR objective <= {GOAL_MDLM}x", "measured": f"{r['mdlm_over_ar']:.3f}x",
         "met": r["mdlm_over_ar"] <= GOAL_MDLM},
        {"goal": f"{dev} step: BD phase / AR objective <= {GOAL_BD}x", "measured": f"{r['bd_over_ar']:.3f}x",
         "met": r["bd_over_ar"] <= GOAL_BD},
        {"goal": f"{dev} step: noise + mask construction < {GOAL_SHARE:.0%} of step time (BD phase, cold "
                 "mask cache)", "measured": f"{100 * r['noise_mask_share_bd']:.2f}% (MDLM "
                                            f"{100 * r['noise_mask_share_mdlm']:.2f}%)",
         "met": r["noise_mask_share_bd"] < GOAL_SHARE and r["noise_mask_share_mdlm"] < GOAL_SHARE},
    ]


def run(model="cpu-moe", seq_length=512, micro_batch_size=2, global_batch_size=4, block=32, rounds=3,
        warmup=1, device="cpu", threads=0, dry_run=False, prototypes=False, timeout=1800, deadline=None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model,
           "--seq-length", str(seq_length), "--micro-batch-size", str(micro_batch_size),
           "--global-batch-size", str(global_batch_size), "--block", str(block), "--rounds", str(rounds),
           "--warmup", str(warmup), "--device", device, "--threads", str(threads)]
    if dry_run:
        cmd.append("--dry-run")
    if prototypes:
        cmd.append("--prototypes")
    common.log(f"step overhead: {model} L={seq_length} B={global_batch_size} (mbs {micro_batch_size}), "
               f"{rounds} rounds, {device}{' (dry run)' if dry_run else ''}")
    if deadline is not None:
        timeout = max(10.0, min(timeout, deadline - time.monotonic()))
    res = common.run_json(cmd, timeout=timeout)
    res["goals"] = goals(res)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cpu-moe", choices=sorted(MODELS))
    p.add_argument("--seq-length", type=int, default=512, help="L (clean tokens per sample)")
    p.add_argument("--micro-batch-size", type=int, default=2)
    p.add_argument("--global-batch-size", type=int, default=4)
    p.add_argument("--block", type=int, default=32, help="block size of the bd layout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--dry-run", action="store_true",
                   help="parse, build the model on the meta device and count FLOPs; no training (CPU ok)")
    p.add_argument("--prototypes", action="store_true",
                   help="also time a BD step whose output layer sees only the noisy half (proposed fix)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if args.worker:
        common.emit_json(worker(args))
        return 0
    res = run(args.model, args.seq_length, args.micro_batch_size, args.global_batch_size, args.block,
              args.rounds, args.warmup, args.device, args.threads, args.dry_run, args.prototypes)
    if args.json_out:
        common.write_json(args.json_out, res)
    import report

    print(report.step_table(res))
    return 0 if res.get("status") != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
