"""Block diffusion (BD3-LM / LLaDA2.0 CPT): input ``[xt ; x0]`` (2L), positions 0..L-1 twice,
block-diffusion AND document mask, loss on the noisy half; the block size follows the curriculum and
a step at block size L is an MDLM step (``at_block``).

``clean_stream_causal`` makes x0 -> x0 strictly causal, and ``ar_loss_weight`` adds a next-token loss
on the clean stream's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from megatron_dllm.config import ConfigError
from megatron_dllm.diffusion import alignment
from megatron_dllm.diffusion.curriculum import BlockSchedule
from megatron_dllm.diffusion.noising import NoiseResult
from megatron_dllm.objectives.base import LossTerms, Objective, StepContext
from megatron_dllm.objectives.diffusion import DiffusionObjective, Layout, diffusion_settings
from megatron_dllm.objectives.mdlm import MdlmObjective


@dataclass(frozen=True)
class BlockDiffusionObjective(DiffusionObjective):
    """Block diffusion with a block-size curriculum."""

    clean_stream_causal: bool = False
    ar_loss_weight: float = 0.0
    stable: Optional[MdlmObjective] = None  # the objective of steps at block size L

    name = "bd"
    layout = "bd"
    streams = 2

    @classmethod
    def check_config(cls, d) -> None:
        """ConfigError without a block schedule (``d``: the DiffusionConfig)."""
        if not d.block_schedule:
            raise ConfigError("--dllm-objective bd needs --dllm-block-schedule (e.g. 'stable:32@inf')")

    @classmethod
    def block_schedule(cls, run) -> BlockSchedule:
        """--dllm-block-schedule, parsed; ConfigError unless every block size divides --seq-length."""
        try:
            return BlockSchedule.parse(run.diffusion.block_schedule, run.model.seq_length)
        except ValueError as exc:
            raise ConfigError(f"--dllm-block-schedule: {exc}") from exc

    @classmethod
    def from_run(cls, run, mask_token_id: int, device: str, backend: str) -> "BlockDiffusionObjective":
        d = run.diffusion
        settings = diffusion_settings(run, mask_token_id, device, backend)
        schedule = cls.block_schedule(run)
        stable = MdlmObjective(schedule=schedule, **settings)
        settings["micro_batch_size"] = cls.micro_batch_size_of(run.training.micro_batch_size, d.bd_micro_batch_size)
        return cls(schedule=schedule, clean_stream_causal=d.clean_stream_causal, ar_loss_weight=d.ar_loss_weight,
                   stable=stable, **settings)

    @classmethod
    def micro_batch_size_of(cls, micro_batch_size: int, bd_micro_batch_size: Optional[int]) -> int:
        """--dllm-bd-micro-batch-size when given (the input is 2L), else --micro-batch-size."""
        return bd_micro_batch_size or micro_batch_size

    def at_block(self, block_size: int) -> Objective:
        if block_size < self.seq_length:
            return self
        if self.stable is None:
            raise ValueError("a block-diffusion step at block size L needs the MDLM objective: build it "
                             "with objective_for(run, ...) or pass stable=")
        return self.stable

    def loss_terms(self, step: StepContext) -> LossTerms:
        return super().loss_terms(step)._replace(ar_weight=self.ar_loss_weight)

    def input_layout(self, batch: Dict, noise: NoiseResult, rows: torch.Tensor, step: StepContext) -> Layout:
        x0 = batch["tokens"]
        kind = "block_diffusion_causal_clean" if self.clean_stream_causal else "block_diffusion"
        attention = self.attention_mask(kind, step.block_size, batch["document_ids"])
        if self.ar_loss_weight <= 0:
            return Layout(torch.cat([noise.xt, x0], dim=1), attention, rows)
        ar_targets, ar_mask = alignment.next_token_targets(x0, batch["loss_mask"])
        rows = torch.cat([rows, alignment.clean_stream_rows(self.seq_length)])
        return Layout(torch.cat([noise.xt, x0], dim=1), attention, rows, ar_targets, ar_mask)
