"""Independent reference for checkpoint merging: load each checkpoint into the model, average."""

from __future__ import annotations

import torch

from megatron_dllm.config import ParallelConfig


def mean_vs_merged_worker(rank, world_size, inputs, merged):
    from megatron_dllm.generate.loading import model_config_from_meta
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel
    from megatron_dllm.checkpoint.state import load_checkpoint, read_meta

    import os

    parallel = ParallelConfig()
    init_model_parallel(parallel)
    root, name = os.path.split(inputs[0])
    cfg = model_config_from_meta(read_meta(root, int(name[5:])))
    states = []
    for path in inputs + [merged]:
        model = build_model(cfg, parallel)
        root, name = os.path.split(path)
        load_checkpoint(root, [model], iteration=int(name[5:]), load_rng=False)
        states.append({k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)})
    *sources, got = states
    mismatched, compared = [], 0
    for key, value in got.items():
        if not value.is_floating_point():
            continue
        expected = (sum(s[key].double() for s in sources) / len(sources)).to(value.dtype)
        compared += 1
        if not torch.equal(expected, value):
            mismatched.append(key)
    differs_from_inputs = any(not torch.equal(got[k], sources[0][k]) for k in got if got[k].is_floating_point())
    return {"mismatched": mismatched, "compared": compared, "differs_from_inputs": differs_from_inputs}
