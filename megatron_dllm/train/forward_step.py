"""One micro-batch: batch -> noise -> layout -> Megatron forward -> diffusion loss.

Layouts (DESIGN.md "One training step"):
    ``bd``    block size < L: input ``[xt ; x0]`` (2L), positions 0..L-1 twice, block-diffusion mask
              AND document mask; loss on the noisy half.
    ``mdlm``  block size = L: input ``xt`` (L), bidirectional document mask.
    ``ar``    the causal baseline: input ``x0``, causal AND document mask, next-token labels.

The loss function follows Megatron's per-token contract: it returns ``(loss_sum, num_tokens, report)``
and Megatron-Core normalises over micro-batches and data-parallel ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from megatron_dllm.diffusion import losses, masks
from megatron_dllm.diffusion.noising import NoiseConfig, NoiseResult, apply_noise, apply_noise_per_sample
from megatron_dllm.diffusion.seeding import noise_generator

STREAM_EVAL = 3


@dataclass
class StepContext:
    """What every micro-batch of one step shares."""

    layout: str                      # "bd" | "mdlm" | "ar"
    seq_length: int                  # L (clean tokens)
    block_size: int                  # L for mdlm; 1..L for bd; ignored for ar
    iteration: int
    seed: int
    noise: NoiseConfig
    mask_token_id: int
    loss_weight: str = "inv_t"
    loss_norm: str = "all_tokens"
    label_shift: bool = False
    attention_backend: str = "sdpa"  # resolved: sdpa | flex | te
    device: str = "cpu"
    num_buckets: int = 5
    eval_t: Optional[float] = None   # validation: every row noised at this t
    embedding_noise: Optional[object] = None  # EmbeddingNoise hook, when active


@dataclass
class ModelInputs:
    tokens: torch.Tensor             # [B, S] S = 2L (bd) or L
    position_ids: torch.Tensor       # [B, S]
    attention_mask: object           # bool [B, S, S] or BlockMask
    targets: torch.Tensor            # [B, L] labels of the positions that carry loss
    noise: NoiseResult               # noise_mask / t_per_token [B, L] (ar: all ones)
    loss_mask: torch.Tensor          # [B, L] bool


def _attention_mask(kind: str, ctx: StepContext, block_size, docs: torch.Tensor):
    if ctx.attention_backend == "flex":
        return masks.flex_block_mask(kind, ctx.seq_length, block_size, docs, device=ctx.device)
    return masks.dense_mask(kind, ctx.seq_length, block_size, docs, device=ctx.device)


def _noise(batch: Dict, ctx: StepContext) -> NoiseResult:
    x0, loss_mask = batch["tokens"], batch["loss_mask"]
    block = ctx.block_size if ctx.noise.granularity == "block" else None
    if ctx.eval_t is None:
        return apply_noise_per_sample(x0, batch["sample_index"], ctx.seed, ctx.iteration, ctx.noise,
                                      ctx.mask_token_id, loss_mask, block_size=block)
    rows = []
    for r, s in enumerate(batch["sample_index"].tolist()):
        gen = noise_generator(ctx.seed, s, ctx.iteration, stream=STREAM_EVAL)
        t = torch.full((1,), ctx.eval_t)
        rows.append(apply_noise(x0[r:r + 1], t, ctx.mask_token_id, loss_mask[r:r + 1], gen))
    return NoiseResult(xt=torch.cat([r.xt for r in rows]), noise_mask=torch.cat([r.noise_mask for r in rows]),
                       t_per_token=torch.cat([r.t_per_token for r in rows]))


def prepare_inputs(batch: Dict, ctx: StepContext) -> ModelInputs:
    """Model inputs of one micro-batch (batch-first tensors on CPU; moved to the device here)."""
    x0 = batch["tokens"]
    loss_mask = batch["loss_mask"].to(torch.bool)
    docs = batch["document_ids"]
    B, L = x0.shape
    if L != ctx.seq_length:
        raise ValueError(f"batch has {L} tokens per sample, the run expects --seq-length {ctx.seq_length}")
    positions = torch.arange(L).expand(B, L)
    if ctx.layout == "ar":
        shifted = losses.label_shift(x0, loss_mask, torch.ones(B, L), loss_mask)
        noise = NoiseResult(xt=x0, noise_mask=shifted.noise_mask, t_per_token=shifted.t_per_token)
        tokens, targets = x0, shifted.targets
        loss_mask = shifted.loss_mask
        attention = _attention_mask("block_causal", ctx, 1, docs)
    else:
        noise = _noise(batch, ctx)
        targets = x0
        if ctx.label_shift:
            shifted = losses.label_shift(x0, noise.noise_mask, noise.t_per_token, loss_mask)
            targets, loss_mask = shifted.targets, shifted.loss_mask
            noise = NoiseResult(xt=noise.xt, noise_mask=shifted.noise_mask, t_per_token=shifted.t_per_token)
        if ctx.layout == "bd":
            tokens = torch.cat([noise.xt, x0], dim=1)
            positions = positions.repeat(1, 2)
            attention = _attention_mask("block_diffusion", ctx, ctx.block_size, docs)
        elif ctx.layout == "mdlm":
            tokens = noise.xt
            attention = _attention_mask("bidirectional", ctx, None, docs)
        else:
            raise ValueError(f"unknown layout {ctx.layout!r}")
    dev = ctx.device
    return ModelInputs(tokens=tokens.to(dev), position_ids=positions.to(dev), attention_mask=attention,
                       targets=targets.to(dev),
                       noise=NoiseResult(noise.xt.to(dev), noise.noise_mask.to(dev), noise.t_per_token.to(dev)),
                       loss_mask=loss_mask.to(dev))


def make_loss_func(inputs: ModelInputs, ctx: StepContext):
    """Megatron loss function: logits [B, S, V/tp] -> (loss_sum, num_tokens, report)."""
    from megatron_dllm.train.vocab_parallel import ce_and_correct

    L = ctx.seq_length

    def loss_func(logits: torch.Tensor):
        ce, correct = ce_and_correct(logits[:, :L], inputs.targets)
        weighting, norm = (("none", "masked_tokens") if ctx.layout == "ar"
                           else (ctx.loss_weight, ctx.loss_norm))
        out = losses.diffusion_loss(ce, inputs.noise.noise_mask, inputs.noise.t_per_token, inputs.loss_mask,
                                    weighting=weighting, normalization=norm,
                                    num_buckets=ctx.num_buckets if ctx.layout != "ar" else 0)
        sel = inputs.noise.noise_mask & inputs.loss_mask
        report = {
            "loss_sum": out.loss_sum.detach().float(),
            "num_tokens": out.num_tokens.detach().float(),
            "num_noised": out.num_noised.detach().float(),
            "correct": (correct & sel).sum().float(),
        }
        if out.bucket_loss_sum is not None:
            for k in range(ctx.num_buckets):
                report[f"bucket{k}_loss_sum"] = out.bucket_loss_sum[k].float()
                report[f"bucket{k}_count"] = out.bucket_count[k].float()
        return out.loss_sum, out.num_tokens.to(torch.int), report

    return loss_func


def make_forward_step(ctx: StepContext):
    """forward_step_func(data_iterator, model) for Megatron-Core's schedules."""

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        inputs = prepare_inputs(batch, ctx)
        hook = ctx.embedding_noise
        if hook is not None:
            hook.sample_indices = batch["sample_index"].tolist()
            hook.iteration = ctx.iteration
        prefix = ctx.seq_length if ctx.layout == "bd" else None  # logits of the noisy half only
        logits = model(inputs.tokens, inputs.position_ids, inputs.attention_mask, logits_prefix=prefix)
        return logits, make_loss_func(inputs, ctx)

    return forward_step
