"""Benchmark: balance of the context-parallel row splits under the project's attention masks.

For each mask (block diffusion at several block sizes, its causal-clean variant, MDLM, AR), document
layout and CP size, the busiest rank's allowed (query, key) pairs over the mean
(``diffusion.context_split.imbalance``) for each split of ``context_split.STRATEGIES``: balanced (the
package default), snake, Megatron-Core's zigzag and contiguous. The goal (issue 16): <= 1.1 for the default. Exact counts
(``row_work``), no timing: the figures depend only on the masks.

    python bench/cp_balance.py [--seq-length 4096 32768] [--cp 2 4 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_dllm.diffusion.context_split import STRATEGIES, imbalance, row_work, split_rows  # noqa: E402

GOAL = 1.1


def documents(layout: str, seq_len: int, seed: int = 0):
    """[L] document ids: none, three fixed documents (1/8, 1/2, 3/8 of L), or a packed stream of
    documents with log-normal lengths (median L / 16, seeded)."""
    if layout == "none":
        return None
    if layout == "three":
        cuts = [seq_len // 8, seq_len // 8 + seq_len // 2, seq_len]
    else:
        gen = torch.Generator().manual_seed(seed)
        cuts, at = [], 0
        while at < seq_len:
            length = int(torch.exp(torch.randn((), generator=gen) + torch.log(torch.tensor(seq_len / 16.0))))
            at = min(seq_len, at + max(length, 1))
            cuts.append(at)
    ids = torch.empty(seq_len, dtype=torch.long)
    begin = 0
    for index, end in enumerate(cuts):
        ids[begin:end] = index
        begin = end
    return ids


def masks(seq_len: int):
    """(label, kind, block size) of the masks in the table."""
    rows = [(f"bd block {b}", "block_diffusion", b) for b in (4, 32, 512) if b < seq_len]
    rows.append(("bd block 32, causal clean", "block_diffusion_causal_clean", 32))
    rows.append(("mdlm (block = L)", "bidirectional", None))
    rows.append(("ar (causal)", "block_causal", 1))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-length", type=int, nargs="+", default=[4096, 32768], help="L (clean tokens)")
    parser.add_argument("--cp", type=int, nargs="+", default=[2, 4, 8], help="CP sizes")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    results, worst = [], 0.0
    header = "| L | mask | documents | CP | " + " | ".join(STRATEGIES) + " |"
    print(header)
    print("|" + "---|" * (4 + len(STRATEGIES)))
    for seq_len in args.seq_length:
        for label, kind, block in masks(seq_len):
            for layout in ("none", "three", "packed"):
                work = row_work(kind, seq_len, block, documents(layout, seq_len))
                for ranks in args.cp:
                    values = {s: imbalance(work, split_rows(work.numel(), ranks, s, work=work))
                              for s in STRATEGIES}
                    worst = max(worst, values["balanced"])
                    results.append(dict(seq_length=seq_len, mask=label, documents=layout, cp=ranks, **values))
                    print(f"| {seq_len} | {label} | {layout} | {ranks} | "
                          + " | ".join(f"{values[s]:.3f}" for s in STRATEGIES) + " |", flush=True)
    print("\nworst imbalance per L and split (over every mask, document layout and CP size above):")
    for seq_len in args.seq_length:
        rows = [r for r in results if r["seq_length"] == seq_len]
        print(f"  L = {seq_len}: " + ", ".join(f"{s} {max(r[s] for r in rows):.3f}" for s in STRATEGIES))
    verdict = "met" if worst <= GOAL else "NOT met"
    print(f"\nworst imbalance of the default (balanced) split {worst:.3f} (goal <= {GOAL}: {verdict})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": results, "worst_balanced": worst, "goal": GOAL}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
