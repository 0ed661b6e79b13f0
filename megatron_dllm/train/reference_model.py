"""The frozen reference model of DPO (``--ref-load DIR``): built like the policy, loaded, never trained.

The reference has the policy's architecture and parallel layout (this rank's shard of the same
TP / EP layout), is loaded from the latest checkpoint under ``--ref-load`` with the training
checkpoint loader (``checkpoint.state.load_checkpoint``: resharding, safe loading, the architecture
check), and is put in eval mode with ``requires_grad`` off: no DDP wrapper, no optimizer, no
gradient buffers. Building it leaves the CPU / CUDA / model-parallel RNG states as they were, so a
run trains the same whether or not a reference is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from megatron.core import tensor_parallel

from megatron_dllm.config import ConfigError, ModelConfig, ParallelConfig


@dataclass(frozen=True)
class ReferenceSource:
    """Where the reference comes from and how to build it (fixed by the run)."""

    load_dir: str
    model: ModelConfig
    parallel: ParallelConfig
    attention_backend: str
    dtype: str
    execution: object  # model.transformer_config.Execution
    device: str

    @classmethod
    def from_run(cls, run, device: str) -> "ReferenceSource":
        from megatron_dllm.model.transformer_config import Execution

        t = run.training
        return cls(load_dir=run.diffusion.ref_load, model=run.model, parallel=run.parallel,
                   attention_backend=run.diffusion.attention_backend, dtype="bf16" if t.bf16 else "fp32",
                   execution=Execution.from_training(t, run.model), device=device)


def load_reference(source: ReferenceSource) -> List[torch.nn.Module]:
    """This rank's chunks of the frozen reference (eval mode, no grad); ConfigError (one line) when
    ``--ref-load`` holds no checkpoint or one of another architecture."""
    from megatron_dllm.checkpoint import state as checkpointing
    from megatron_dllm.model.builder import build_model_chunks

    if checkpointing.latest_iteration(source.load_dir) is None:
        raise ConfigError(f"--ref-load {source.load_dir}: no checkpoint found: pass the directory of the "
                          f"reference checkpoint (e.g. the SFT model's --save)")
    tracker = tensor_parallel.get_cuda_rng_tracker()
    states = tracker.get_states()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and source.device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        chunks = build_model_chunks(source.model, source.parallel, causal=False,
                                    attention_backend=source.attention_backend, dtype=source.dtype,
                                    execution=source.execution)
    tracker.set_states(states)
    if source.device == "cuda":
        chunks = [c.cuda() for c in chunks]
    checkpointing.load_checkpoint(source.load_dir, chunks, model_config=source.model, load_optimizer=False,
                                  load_rng=False)
    for chunk in chunks:
        chunk.eval()
        chunk.requires_grad_(False)
    return chunks
