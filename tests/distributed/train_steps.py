"""The training path of a test worker: a run from flags, then optimizer steps as the loop takes them."""

from __future__ import annotations

from typing import Dict, List


def setup_from_flags(flags: List[str], world_size: int):
    """``parse_args`` -> ``check_run`` -> ``setup_run`` on CPU: (run, setup)."""
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.train.preflight import check_run
    from megatron_dllm.train.setup import setup_run

    run = parse_args(flags)
    check_run(run, world_size)
    return run, setup_run(run, "cpu")


def take_steps(run, setup, steps: int) -> Dict[str, list]:
    """``steps`` optimizer steps (each must update): summed loss, loss tokens, grad norm, layout of each."""
    from megatron_dllm.train.loop import run_step

    state, out = setup.state, {"loss_sum": [], "num_tokens": [], "grad_norm": [], "layouts": []}
    for _ in range(steps):
        objective, block, _ = setup.objective.phase_at(state.consumed_tokens)
        step = run_step(setup, objective, block)
        assert step["updated"], step
        out["loss_sum"].append(float(step["totals"]["loss_sum"]))
        out["num_tokens"].append(float(step["totals"]["num_tokens"]))
        out["grad_norm"].append(float(step["grad_norm"]))
        out["layouts"].append(objective.layout)
        state.iteration += 1
        state.consumed_samples += run.training.global_batch_size
        state.consumed_tokens += run.training.global_batch_size * run.model.seq_length
    return out
