"""Load a dLLM checkpoint (ours, torch_dist) for inference under the current TP layout."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from megatron.core import parallel_state, tensor_parallel

from megatron_dllm.config import ConfigError, ModelConfig, ParallelConfig, validate
from megatron_dllm.model.builder import build_model
from megatron_dllm.platform.distributed import init_model_parallel
from megatron_dllm.checkpoint import state as checkpointing


def model_config_from_meta(meta: dict) -> ModelConfig:
    saved = meta.get("run", {}).get("model")
    if not saved:
        raise ConfigError("the checkpoint has no model config in dllm_meta.json (not a megatron_dllm checkpoint?)")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in saved.items() if k in names})


def inference_config(load_dir: str, parallel: ParallelConfig, world_size: Optional[int] = None):
    """(checkpoint metadata, its ModelConfig, the ParallelConfig to load it with), read without
    building the model; ConfigError (one line, naming the fix) for a missing checkpoint or a parallel
    layout the model cannot take (a size < 1, TP not dividing the heads, PP != 1, ...)."""
    if parallel.pipeline_model_parallel_size != 1:
        raise ConfigError("generation supports --pipeline-model-parallel-size 1 only")
    iteration = checkpointing.latest_iteration(load_dir)
    if iteration is None:
        raise ConfigError(f"--load {load_dir}: no checkpoint found")
    meta = checkpointing.read_meta(load_dir, iteration)
    # Experts trained as TE grouped GEMMs load into the local per-expert layers (same checkpoint keys).
    model_cfg = dataclasses.replace(model_config_from_meta(meta), moe_grouped_gemm=False)
    if model_cfg.is_moe and parallel.tensor_model_parallel_size > 1:
        parallel = dataclasses.replace(parallel, sequence_parallel=True)
    validate(model_cfg, parallel, world_size)
    return meta, model_cfg, parallel


def load_for_inference(load_dir: str, parallel: ParallelConfig, device: str, attention_backend: str = "sdpa"):
    """(model in eval mode, its ModelConfig, the checkpoint metadata). PP must be 1; the process
    group must be up (its world size is checked against the parallel layout)."""
    import torch.distributed as dist

    meta, model_cfg, parallel = inference_config(load_dir, parallel, dist.get_world_size())
    init_model_parallel(parallel)
    model = build_model(model_cfg, parallel, attention_backend=attention_backend)
    if device == "cuda":
        model = model.cuda()
    checkpointing.load_checkpoint(load_dir, [model], model_config=model_cfg, load_rng=False)
    model.eval()
    return model, model_cfg, meta


def full_vocab_forward(model, vocab_size: int):
    """forward(tokens, positions, mask) -> logits [b, s, vocab_size]: gathered over tensor-parallel
    ranks, without the padded rows of the vocabulary (which no tokenizer can decode)."""

    @torch.no_grad()
    def forward(tokens, positions, mask):
        logits = model(tokens, positions, mask)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        return logits[..., :vocab_size]

    return forward
