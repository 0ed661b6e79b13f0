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

    from tests.distributed.train_steps import setup_from_flags, take_steps

    run, setup = setup_from_flags(["--preset", preset] + COMMON + flags, world_size)
    out = take_steps(run, setup, steps)
    out["context_parallel"] = setup.model[0].config.context_parallel_size  # reached Megatron-Core's config
    out["objective_cp"] = setup.objective.context_parallel
    parallel_state.destroy_model_parallel()
    return out


def runs_worker(rank, world_size, cases, steps):
    """{name: per-step numbers} for each (name, preset, flags) in ``cases`` on this world size."""
    return {name: train(preset, flags, steps, world_size) for name, preset, flags in cases}
