"""Build every example config's model on the meta device (one spawned rank)."""

from __future__ import annotations


def build_examples_worker(rank, world_size, paths):
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.model.info import model_info

    out = {}
    for path in paths:
        run = parse_args(["--config", path, "--mock-data"])
        info = model_info(run.model)
        out[path] = (info["total_params"], info["active_params"])
    return out
