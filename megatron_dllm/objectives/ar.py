"""The causal AR baseline: input ``x0`` (L), causal AND document mask, next-token labels, no noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from megatron_dllm.config import ConfigError
from megatron_dllm.diffusion import alignment, losses
from megatron_dllm.diffusion.noising import NoiseResult
from megatron_dllm.objectives.base import LossTerms, ModelInputs, Objective, StepContext


@dataclass(frozen=True)
class ArObjective(Objective):
    """Next-token prediction with the same data, model and loss code as the dLLM objectives."""

    name = "ar"
    layout = "ar"
    causal = True
    uses_mask_token = False  # the AR baseline never uses [MASK]

    @classmethod
    def check_config(cls, d) -> None:
        """ConfigError for dLLM-only options (``d``: the DiffusionConfig)."""
        if d.block_schedule:
            raise ConfigError("--dllm-block-schedule is only used with --dllm-objective bd")
        if d.token_shift or d.clean_stream_causal or d.complementary_masking:
            raise ConfigError("--dllm-token-shift / --dllm-clean-stream-causal / --dllm-complementary-masking "
                              "are dLLM options: use them with --dllm-objective bd or mdlm")

    @classmethod
    def block_schedule(cls, run):
        """AR has no block-size curriculum."""
        return None

    @classmethod
    def from_run(cls, run, mask_token_id: int, device: str, backend: str) -> "ArObjective":
        return cls(seq_length=run.model.seq_length, micro_batch_size=run.training.micro_batch_size,
                   attention_backend=backend, device=device, context_parallel=run.parallel.context_parallel_size)

    def phase_at(self, consumed_tokens: int) -> Tuple[Objective, int, str]:
        return self, 1, "ar"

    def loss_terms(self, step: StepContext) -> LossTerms:
        return LossTerms(weighting="none", normalization="masked_tokens", num_buckets=0)

    def prepare_inputs(self, batch: Dict, step: StepContext) -> ModelInputs:
        """Causal input x0, labels x0 shifted left by one (the last position of a row carries none)."""
        L = self.check_length(batch)
        x0 = batch["tokens"]
        B = x0.shape[0]
        loss_mask = batch["loss_mask"].to(torch.bool)
        shifted = losses.label_shift(x0, loss_mask, torch.ones(B, L), loss_mask)
        noise = NoiseResult(xt=x0, noise_mask=shifted.noise_mask, t_per_token=shifted.t_per_token)
        attention = self.attention_mask("block_causal", 1, batch["document_ids"])
        return self.model_inputs(batch, x0, attention, shifted.targets, noise, shifted.loss_mask,
                                 alignment.same_position_rows(L))
