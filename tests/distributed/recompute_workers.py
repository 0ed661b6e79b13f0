"""One CPU rank trains a few steps of the tiny MoE under each recompute mode (tests/distributed/test_recompute.py)."""

from __future__ import annotations

from typing import Dict, List

import torch


def _train(preset: str, extra: List[str], steps: int) -> Dict[str, object]:
    from megatron.core import parallel_state

    from tests.distributed.train_steps import setup_from_flags, take_steps

    run, setup = setup_from_flags(["--preset", preset, "--mock-data", "--device", "cpu", "--log-interval", "1000",
                                   "--seq-length", "64", "--micro-batch-size", "4", "--global-batch-size", "8",
                                   "--lr", "3e-3", "--train-iters", "20"] + extra, 1)
    out = take_steps(run, setup, steps)
    params = [p.detach().clone() for chunk in setup.model for p in chunk.parameters()]
    buffers = [b.detach().clone() for chunk in setup.model for n, b in chunk.named_buffers() if "expert_bias" in n]
    out["params"], out["expert_bias"] = params, buffers
    out["recompute"] = setup.model[0].config.recompute_granularity
    parallel_state.destroy_model_parallel()
    return out


def recompute_runs(rank, world_size, preset: str, objectives: List[List[str]], variants: List[List[str]],
                   steps: int) -> Dict[str, object]:
    """For each objective, the run without recompute vs each variant: equal losses, norms, weights?"""
    results = {}
    for objective in objectives:
        base = _train(preset, objective, steps)
        for variant in variants:
            got = _train(preset, objective + variant, steps)
            results[(" ".join(objective), " ".join(variant))] = {
                "recompute": got["recompute"], "layouts": got["layouts"],
                "loss_equal": got["loss_sum"] == base["loss_sum"],
                "grad_norm_equal": got["grad_norm"] == base["grad_norm"],
                "params_equal": all(torch.equal(a, b) for a, b in zip(got["params"], base["params"])),
                "expert_bias_equal": all(torch.equal(a, b) for a, b in zip(got["expert_bias"], base["expert_bias"])),
                "expert_bias_moved": any(b.abs().sum().item() > 0 for b in got["expert_bias"]),
                "losses": (base["loss_sum"], got["loss_sum"]),
                "grad_norms": (base["grad_norm"], got["grad_norm"]),
                "max_param_diff": max((a - b).abs().max().item() for a, b in zip(got["params"], base["params"])),
            }
    return results
