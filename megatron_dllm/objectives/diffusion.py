"""What the masked-diffusion objectives (MDLM, block diffusion) share: noise, complementary copies,
label and token shift, the t buckets, the evaluation t points and the embedding-noise hook.

Variants (``diffusion/alignment.py``): ``token_shift`` reads the logit of position i from row i-1
(a block's first token from the clean stream); ``label_shift`` keeps the AR alignment (Dream style);
``complementary`` doubles the rows of a micro-batch with the complementary masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from megatron_dllm.diffusion import alignment, losses
from megatron_dllm.diffusion.curriculum import BlockSchedule
from megatron_dllm.diffusion.noising import (NoiseConfig, NoiseResult, apply_noise, apply_noise_per_sample,
                                             complement)
from megatron_dllm.diffusion.seeding import noise_generator
from megatron_dllm.objectives.base import LossTerms, ModelInputs, Objective, StepContext

STREAM_EVAL = 3


class Layout(NamedTuple):
    """The model input of one micro-batch, as a subclass lays it out."""

    tokens: torch.Tensor                   # [B, S]
    attention: object                      # dense bool or BlockMask
    rows: torch.Tensor                     # rows projected to logits
    ar_targets: Optional[torch.Tensor] = None
    ar_mask: Optional[torch.Tensor] = None


def diffusion_settings(run, mask_token_id: int, device: str, backend: str) -> dict:
    """The constructor arguments every diffusion objective takes from the run."""
    d, t = run.diffusion, run.training
    hook = None
    if d.embedding_noise_std > 0 and d.embedding_noise_iters > 0:
        from megatron_dllm.model.embedding_noise import EmbeddingNoise

        hook = EmbeddingNoise(mask_token_id, d.embedding_noise_std, t.seed, d.embedding_noise_iters)
    return dict(
        seq_length=run.model.seq_length, micro_batch_size=t.micro_batch_size, attention_backend=backend,
        device=device, context_parallel=run.parallel.context_parallel_size, seed=t.seed, mask_token_id=mask_token_id,
        noise=NoiseConfig(eps=d.t_eps, t_low=d.t_low, t_high=d.t_high, sampling=d.t_sampling,
                          granularity=d.t_granularity, num_strata=t.global_batch_size),
        loss_weight=d.loss_weight, loss_norm=d.loss_norm, label_shift=d.label_shift,
        token_shift=d.token_shift, complementary=d.complementary_masking, t_buckets=d.t_buckets,
        eval_t_points=d.eval_t_points, hook=hook)


@dataclass(frozen=True)
class DiffusionObjective(Objective):
    """Masked diffusion: noise x0 to xt, predict the clean tokens at the noised positions.
    Subclasses provide ``input_layout(batch, noise, rows, step) -> Layout``."""

    seed: int = 0
    mask_token_id: int = 0
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss_weight: str = "inv_t"
    loss_norm: str = "all_tokens"
    label_shift: bool = False
    token_shift: bool = False
    complementary: bool = False
    t_buckets: int = 5
    eval_t_points: int = 5
    hook: Optional[object] = None          # EmbeddingNoise (model/embedding_noise.py), when on
    schedule: Optional[BlockSchedule] = None

    def phase_at(self, consumed_tokens: int) -> Tuple[Objective, int, str]:
        block = self.schedule.block_size_at(consumed_tokens)
        return self.at_block(block), block, self.schedule.phase_at(consumed_tokens)

    def rows_per_sample(self, step: StepContext) -> int:
        return 2 if self.complementary and step.training else 1

    @classmethod
    def training_rows_per_sample(cls, d) -> int:
        """2 with --dllm-complementary-masking (each sample and its complementary copy), else 1."""
        return 2 if d.complementary_masking else 1

    def eval_points(self) -> List[Optional[float]]:
        """K midpoints of the t range: a midpoint rule over t (train/evaluation.py)."""
        n = self.noise
        lo = n.t_low if n.t_low is not None else n.eps
        hi = n.t_high if n.t_high is not None else 1.0
        return [lo + (hi - lo) * (k + 0.5) / self.eval_t_points for k in range(self.eval_t_points)]

    def loss_terms(self, step: StepContext) -> LossTerms:
        if step.training:
            return LossTerms(self.loss_weight, self.loss_norm, self.t_buckets)
        return LossTerms("inv_t", "all_tokens", self.t_buckets)  # the ELBO, whatever the training weights

    def attach(self, chunks) -> None:
        if self.hook is not None:
            for chunk in chunks:
                self.hook.attach(chunk)

    def embedding_noise(self, inputs: ModelInputs, step: StepContext):
        if self.hook is None or not step.training:
            return super().embedding_noise(inputs, step)
        split = inputs.cp_split  # context parallelism: this rank's rows of the input
        rows = None if split is None else (split.local_rows(), split.total)
        return self.hook.applied(inputs.sample_index.tolist(), step.iteration, rows)

    def input_layout(self, batch: Dict, noise: NoiseResult, rows: torch.Tensor, step: StepContext) -> Layout:
        raise NotImplementedError

    def prepare_inputs(self, batch: Dict, step: StepContext) -> ModelInputs:
        """Noise, complementary copies (training), label / token shift, then the subclass's layout."""
        L = self.check_length(batch)
        noise = self._noise(batch, step)
        if self.complementary and step.training:
            batch, noise = self._complementary(batch, noise)
        x0 = batch["tokens"]
        loss_mask = batch["loss_mask"].to(torch.bool)
        targets = x0
        if self.label_shift:
            shifted = losses.label_shift(x0, noise.noise_mask, noise.t_per_token, loss_mask)
            targets, loss_mask = shifted.targets, shifted.loss_mask
            noise = NoiseResult(xt=noise.xt, noise_mask=shifted.noise_mask, t_per_token=shifted.t_per_token)
        if self.token_shift:
            loss_mask = alignment.token_shift_loss_mask(loss_mask)
            rows = alignment.token_shift_rows(L, step.block_size, two_streams=self.streams == 2)
        else:
            rows = alignment.same_position_rows(L)
        lay = self.input_layout(batch, noise, rows, step)
        return self.model_inputs(batch, lay.tokens, lay.attention, targets, noise, loss_mask, lay.rows,
                                 lay.ar_targets, lay.ar_mask)

    def _noise(self, batch: Dict, step: StepContext) -> NoiseResult:
        x0, loss_mask = batch["tokens"], batch["loss_mask"]
        block = step.block_size if self.noise.granularity == "block" else None
        if step.eval_t is None:
            return apply_noise_per_sample(x0, batch["sample_index"], self.seed, step.iteration, self.noise,
                                          self.mask_token_id, loss_mask, block_size=block)
        rows = []
        for r, s in enumerate(batch["sample_index"].tolist()):
            gen = noise_generator(self.seed, s, step.iteration, stream=STREAM_EVAL)
            t = torch.full((1,), step.eval_t)
            rows.append(apply_noise(x0[r:r + 1], t, self.mask_token_id, loss_mask[r:r + 1], gen))
        return NoiseResult(xt=torch.cat([r.xt for r in rows]), noise_mask=torch.cat([r.noise_mask for r in rows]),
                           t_per_token=torch.cat([r.t_per_token for r in rows]))

    def _complementary(self, batch: Dict, noise: NoiseResult):
        """The batch twice: rows as noised, then the same rows with the complementary masks."""
        other = complement(noise, batch["tokens"], self.mask_token_id, batch["loss_mask"].to(torch.bool))
        doubled = {k: torch.cat([v, v]) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        both = NoiseResult(xt=torch.cat([noise.xt, other.xt]), noise_mask=torch.cat([noise.noise_mask, other.noise_mask]),
                           t_per_token=torch.cat([noise.t_per_token, other.t_per_token]))
        return doubled, both
