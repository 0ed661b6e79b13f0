"""MDLM: input ``xt`` (L), bidirectional attention within documents; block size L (the stable phase
of block diffusion is this objective too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from megatron_dllm.config import ConfigError
from megatron_dllm.diffusion.curriculum import BlockSchedule
from megatron_dllm.diffusion.noising import NoiseResult
from megatron_dllm.objectives.base import StepContext
from megatron_dllm.objectives.diffusion import DiffusionObjective, Layout, diffusion_settings


@dataclass(frozen=True)
class MdlmObjective(DiffusionObjective):
    """Full-sequence masked diffusion."""

    name = "mdlm"
    layout = "mdlm"

    @classmethod
    def check_config(cls, d) -> None:
        """ConfigError for options the MDLM layout cannot honour (``d``: the DiffusionConfig)."""
        if d.block_schedule:
            raise ConfigError("--dllm-block-schedule is only used with --dllm-objective bd")
        if d.clean_stream_causal:
            raise ConfigError("--dllm-clean-stream-causal needs the block-diffusion layout: use "
                              "--dllm-objective bd (the MDLM layout has no clean stream)")

    @classmethod
    def block_schedule(cls, run) -> BlockSchedule:
        """A constant block size L."""
        L = run.model.seq_length
        return BlockSchedule.constant(L, L)

    @classmethod
    def from_run(cls, run, mask_token_id: int, device: str, backend: str) -> "MdlmObjective":
        return cls(schedule=cls.block_schedule(run), **diffusion_settings(run, mask_token_id, device, backend))

    def input_layout(self, batch: Dict, noise: NoiseResult, rows: torch.Tensor, step: StepContext) -> Layout:
        return Layout(noise.xt, self.attention_mask("bidirectional", None, batch["document_ids"]), rows)
