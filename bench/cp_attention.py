"""Benchmark: per-rank attention cost under context parallelism (CP), one process (CPU, or CUDA).

What a CP rank computes in a layer's core attention, after the all-gather of K / V: its rows of the
queries (``split_rows``, the balanced default) against all 2L keys, forward + backward, with its rows
of the block-diffusion mask with documents. Every rank of CP 2 and CP 4 is run in turn in this one
process and compared with the one-rank attention over all rows (``DiffusionCoreAttention``: on CPU
the sdpa backend, which takes the block-sparse path, fp32; on CUDA compiled FlexAttention with each
rank's rows of the ``BlockMask``, bf16). Reported per CP size: the busiest rank's time and
added peak memory of a warm call (the mask's tile plan cached, as from the second layer on) over CP 1's (goal, issue 16: time <= 0.6x at CP 2 and <= 0.35x at CP 4; memory
likewise). Not included: the all-gather of K / V and the reduce-scatter of their gradients
(2 x 2L x groups x head_dim values per layer each way), which the gloo equivalence tests exercise.

    python bench/cp_attention.py [--seq 8192] [--rounds 3] [--threads 1] [--device cpu|cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
from attention import _config, document_ids, prepare_process  # noqa: E402

GOALS = {2: 0.6, 4: 0.35}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=8192, help="2L, the [xt ; x0] input length")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--cp", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = args.device
    prepare_process(device, args.threads)
    import torch
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_dllm.diffusion.context_split import imbalance, row_work, split_rows
    from megatron_dllm.diffusion.masks import block_diffusion_mask, flex_block_mask
    from megatron_dllm.model.core_attention import DiffusionCoreAttention

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    S, L = args.seq, args.seq // 2
    docs = document_ids(L)
    work = row_work("block_diffusion", L, args.block, docs[0])
    attn = DiffusionCoreAttention(_config(args.heads, args.groups, args.head_dim, cuda), 1,
                                  AttnMaskType.arbitrary, "self", backend="flex" if cuda else "sdpa")

    def rank_mask(rows):  # a rank's rows of the BD mask with documents
        if cuda:
            return flex_block_mask("block_diffusion", L, args.block, docs.to(device), device=device,
                                   query_rows=rows)
        return block_diffusion_mask(L, args.block, docs)[:, rows].contiguous()

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(S, 1, args.heads, args.head_dim, generator=gen).to(device, dtype)
    k = torch.randn(S, 1, args.groups, args.head_dim, generator=gen).to(device, dtype)
    v = torch.randn(S, 1, args.groups, args.head_dim, generator=gen).to(device, dtype)
    grad_out = torch.randn(S, 1, args.heads * args.head_dim, generator=gen).to(device, dtype)

    variants = {"cp1": (torch.arange(S, device=device), rank_mask(torch.arange(S)))}
    balance = {}
    for n in args.cp:
        rows = split_rows(S, n, work=work)
        balance[n] = imbalance(work, rows)
        for r in range(n):
            variants[f"cp{n}_rank{r}"] = (rows[r].to(device), rank_mask(rows[r]))

    def step_fn(rows, local_mask):
        def step():
            leaves = [q[rows].clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()]
            out = attn(*leaves, local_mask)
            out.backward(grad_out[rows])
            return out
        return step

    steps = {name: step_fn(*spec) for name, spec in variants.items()}
    memory = {}
    for name, step in steps.items():
        step()  # warm: the tile plan of the mask is built (CUDA: compiled) once, as for every later layer
        with common.peak_memory(device) as pm:
            step()
        memory[name] = round(pm.added_mib, 1)
    times = common.interleaved(steps, rounds=args.rounds, warmup=0, device=device)
    base_t = common.median(times["cp1"])
    print(f"2L = {S}, BD block {args.block}, 3 documents, {args.heads}/{args.groups} heads x {args.head_dim}, "
          f"{str(dtype).replace('torch.', '')}, {device} ({torch.get_num_threads()} CPU thread(s)), {args.rounds} rounds")
    print(f"cp1: {base_t * 1e3:.0f} ms fwd+bwd, {memory['cp1']:.0f} MiB added")
    print("| CP | busiest rank time / CP1 | mean rank time / CP1 | busiest rank memory / CP1 | work balance "
          "(max / mean pairs) | goal |")
    print("|---|---|---|---|---|---|")
    rows_out = []
    for n in args.cp:
        ranks = [f"cp{n}_rank{r}" for r in range(n)]
        t = [common.median(times[name]) / base_t for name in ranks]
        m = [memory[name] / max(memory["cp1"], 1e-3) for name in ranks]
        goal = GOALS.get(n)
        met = goal is not None and max(t) <= goal and max(m) <= goal
        print(f"| {n} | {max(t):.3f} | {sum(t) / n:.3f} | {max(m):.3f} | {balance[n]:.3f} | "
              f"<= {goal} {'met' if met else 'NOT met'} |")
        rows_out.append({"cp": n, "time_max": max(t), "time_mean": sum(t) / n, "memory_max": max(m),
                         "balance": balance[n], "goal": goal, "met": met})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"date": common.now_iso(), "machine": common.machine_info(), "device": device, "cp1_s": base_t, "cp1_mib": memory["cp1"],
                       "memory_mib": memory, "rows": rows_out}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
