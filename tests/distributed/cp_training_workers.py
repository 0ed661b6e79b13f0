"""Workers of test_context_parallel_training: the training step under CP layouts vs one rank.

Each run is the real training path (``parse_args`` -> ``check_run`` -> ``setup_run`` -> ``run_step``)
on mock data with packed documents, weights initialised as a function of (seed, parameter name), so
every layout starts from the same model and sees the same global batch and noise.
"""

from __future__ import annotations

from typing import Dict, List

COMMON = ["--mock-data", "--device", "cpu", "--log-interval", "1000", "--seq-length", "64",
          "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "3e-3", "--train-iters", "20",
          "--dllm-attention-backend", "sdpa"]


def train(preset: str, flags: List[str], steps: int, world_size: int) -> Dict[str, list]:
    """Loss sum, loss tokens and gradient norm of each of ``steps`` optimizer steps."""
    from megatron.core import parallel_state

    from megatron_dllm.arguments import parse_args
    from megatron_dllm.train.loop import run_step
    from megatron_dllm.train.preflight import check_run
    from megatron_dllm.train.setup import setup_run

    run = parse_args(["--preset", preset] + COMMON + flags)
    check_run(run, world_size)
    setup = setup_run(run, "cpu")
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
    out["context_parallel"] = setup.model[0].config.context_parallel_size  # reached Megatron-Core's config
    out["objective_cp"] = setup.objective.context_parallel
    parallel_state.destroy_model_parallel()
    return out


def runs_worker(rank, world_size, cases, steps):
    """{name: per-step numbers} for each (name, preset, flags) in ``cases`` on this world size."""
    return {name: train(preset, flags, steps, world_size) for name, preset, flags in cases}
