"""One micro-batch: batch -> noise -> layout -> Megatron forward -> diffusion loss.

Layouts (DESIGN.md "One training step"):
    ``bd``    block size < L: input ``[xt ; x0]`` (2L), positions 0..L-1 twice, block-diffusion mask
              AND document mask; loss on the noisy half.
    ``mdlm``  block size = L: input ``xt`` (L), bidirectional document mask.
    ``ar``    the causal baseline: input ``x0``, causal AND document mask, next-token labels.

Variants (``diffusion/alignment.py``): ``token_shift`` reads the logit of position i from row i-1
(a block's first token from the clean stream); ``clean_stream_causal`` makes x0 -> x0 strictly
causal, and ``ar_loss_weight`` adds a next-token loss on the clean stream's outputs;
``complementary`` doubles the rows of a micro-batch with the complementary masks.

The loss function follows Megatron's per-token contract: it returns ``(loss_sum, num_tokens, report)``
and Megatron-Core normalises over micro-batches and data-parallel ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from megatron_dllm.diffusion import alignment, losses, masks
from megatron_dllm.diffusion.noising import (NoiseConfig, NoiseResult, apply_noise, apply_noise_per_sample,
                                             complement)
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
    token_shift: bool = False
    clean_stream_causal: bool = False
    ar_loss_weight: float = 0.0
    complementary: bool = False
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
    logits_index: Optional[torch.Tensor]  # [L] or [2L] long: rows projected to logits (None: all)
    sample_index: torch.Tensor       # [B] global sample index of each row (repeated by complementary)
    ar_targets: Optional[torch.Tensor] = None  # [B, L] next-token targets of the clean stream
    ar_mask: Optional[torch.Tensor] = None     # [B, L] bool, where they carry loss


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


def _complementary(batch: Dict, noise: NoiseResult, ctx: StepContext):
    """The batch twice: rows as noised, then the same rows with the complementary masks."""
    other = complement(noise, batch["tokens"], ctx.mask_token_id, batch["loss_mask"].to(torch.bool))
    doubled = {k: torch.cat([v, v]) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    both = NoiseResult(xt=torch.cat([noise.xt, other.xt]), noise_mask=torch.cat([noise.noise_mask, other.noise_mask]),
                       t_per_token=torch.cat([noise.t_per_token, other.t_per_token]))
    return doubled, both


def prepare_inputs(batch: Dict, ctx: StepContext) -> ModelInputs:
    """Model inputs of one micro-batch (batch-first tensors on CPU; moved to the device here)."""
    x0 = batch["tokens"]
    B, L = x0.shape
    if L != ctx.seq_length:
        raise ValueError(f"batch has {L} tokens per sample, the run expects --seq-length {ctx.seq_length}")
    ar_targets = ar_mask = None
    if ctx.layout == "ar":
        loss_mask = batch["loss_mask"].to(torch.bool)
        shifted = losses.label_shift(x0, loss_mask, torch.ones(B, L), loss_mask)
        noise = NoiseResult(xt=x0, noise_mask=shifted.noise_mask, t_per_token=shifted.t_per_token)
        tokens, targets = x0, shifted.targets
        loss_mask = shifted.loss_mask
        attention = _attention_mask("block_causal", ctx, 1, batch["document_ids"])
        rows = alignment.same_position_rows(L)
    else:
        noise = _noise(batch, ctx)
        if ctx.complementary and ctx.eval_t is None:
            batch, noise = _complementary(batch, noise, ctx)
            x0 = batch["tokens"]
        loss_mask = batch["loss_mask"].to(torch.bool)
        docs = batch["document_ids"]
        targets = x0
        if ctx.label_shift:
            shifted = losses.label_shift(x0, noise.noise_mask, noise.t_per_token, loss_mask)
            targets, loss_mask = shifted.targets, shifted.loss_mask
            noise = NoiseResult(xt=noise.xt, noise_mask=shifted.noise_mask, t_per_token=shifted.t_per_token)
        if ctx.token_shift:
            loss_mask = alignment.token_shift_loss_mask(loss_mask)
            rows = alignment.token_shift_rows(L, ctx.block_size, two_streams=ctx.layout == "bd")
        else:
            rows = alignment.same_position_rows(L)
        if ctx.layout == "bd":
            tokens = torch.cat([noise.xt, x0], dim=1)
            kind = "block_diffusion_causal_clean" if ctx.clean_stream_causal else "block_diffusion"
            attention = _attention_mask(kind, ctx, ctx.block_size, docs)
            if ctx.ar_loss_weight > 0:
                ar_targets, ar_mask = alignment.next_token_targets(x0, batch["loss_mask"])
                rows = torch.cat([rows, alignment.clean_stream_rows(L)])
        elif ctx.layout == "mdlm":
            tokens = noise.xt
            attention = _attention_mask("bidirectional", ctx, None, docs)
        else:
            raise ValueError(f"unknown layout {ctx.layout!r}")
    if len(rows) == tokens.shape[1] and torch.equal(rows, torch.arange(len(rows))):
        rows = None  # every row, in order: the stock output layer
    positions = torch.arange(L).expand(x0.shape[0], L)
    if tokens.shape[1] == 2 * L:
        positions = positions.repeat(1, 2)
    dev = ctx.device
    move = (lambda x: None if x is None else x.to(dev))  # noqa: E731
    return ModelInputs(tokens=tokens.to(dev), position_ids=positions.to(dev), attention_mask=attention,
                       targets=targets.to(dev),
                       noise=NoiseResult(noise.xt.to(dev), noise.noise_mask.to(dev), noise.t_per_token.to(dev)),
                       loss_mask=loss_mask.to(dev), logits_index=rows, sample_index=batch["sample_index"],
                       ar_targets=move(ar_targets), ar_mask=move(ar_mask))


def make_loss_func(inputs: ModelInputs, ctx: StepContext):
    """Megatron loss function: logits [B, S, V/tp] -> (loss_sum, num_tokens, report)."""
    from megatron_dllm.train.vocab_parallel import ce_and_correct

    L = ctx.seq_length

    def loss_func(logits: torch.Tensor):
        ce, correct = ce_and_correct(logits[:, :L], inputs.targets)  # rows = inputs.logits_index
        weighting, norm = (("none", "masked_tokens") if ctx.layout == "ar"
                           else (ctx.loss_weight, ctx.loss_norm))
        out = losses.diffusion_loss(ce, inputs.noise.noise_mask, inputs.noise.t_per_token, inputs.loss_mask,
                                    weighting=weighting, normalization=norm,
                                    num_buckets=ctx.num_buckets if ctx.layout != "ar" else 0)
        sel = inputs.noise.noise_mask & inputs.loss_mask
        loss_sum = out.loss_sum
        report = {}
        if inputs.ar_targets is not None:  # next-token loss of the causal clean stream
            ar_ce, _ = ce_and_correct(logits[:, L:], inputs.ar_targets)
            ar_sum = torch.where(inputs.ar_mask, ar_ce, torch.zeros_like(ar_ce)).sum()
            loss_sum = loss_sum + ctx.ar_loss_weight * ar_sum
            report["ar_loss_sum"] = ar_sum.detach().float()
            report["ar_tokens"] = inputs.ar_mask.sum().float()
        report.update({
            "loss_sum": loss_sum.detach().float(),
            "num_tokens": out.num_tokens.detach().float(),
            "num_noised": out.num_noised.detach().float(),
            "correct": (correct & sel).sum().float(),
        })
        if out.bucket_loss_sum is not None:
            for k in range(ctx.num_buckets):
                report[f"bucket{k}_loss_sum"] = out.bucket_loss_sum[k].float()
                report[f"bucket{k}_count"] = out.bucket_count[k].float()
        return loss_sum, out.num_tokens.to(torch.int), report

    return loss_func


def make_forward_step(ctx: StepContext):
    """forward_step_func(data_iterator, model) for Megatron-Core's schedules."""

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        inputs = prepare_inputs(batch, ctx)
        hook = ctx.embedding_noise
        if hook is not None:
            hook.sample_indices = inputs.sample_index.tolist()
            hook.iteration = ctx.iteration
        # the rows with a loss only: the clean half of [xt ; x0] is not projected unless it has one
        logits = model(inputs.tokens, inputs.position_ids, inputs.attention_mask,
                       logits_index=inputs.logits_index)
        return logits, make_loss_func(inputs, ctx)

    return forward_step
