"""A micro-batch under context parallelism: this CP rank's rows of the model input and of the loss.

The objective prepares the whole micro-batch on every CP rank (the same batch, noise and labels:
they are functions of the data and of (seed, sample index, iteration) only). With
``--context-parallel-size N`` > 1 its ``attention_mask`` returns a :class:`MaskSpec` instead of the
mask, and :func:`shard` then

1. splits the S input positions among the N ranks (``diffusion.context_split.split_rows``, the
   work-balanced split computed from the micro-batch's mask and documents, identical on every rank);
2. keeps this rank's rows of the tokens and position ids and builds its rows of the mask (``[B, R, S]``
   or the FlexAttention ``BlockMask`` of those rows: the full S x S mask is never built);
3. keeps, of the rows the objective projects to logits (``logits_index``), those this rank holds, and
   the matching columns of the targets, noise, loss mask and next-token targets, so the loss function
   sees this rank's terms only. Summed over the CP group (Megatron-Core's reductions over DP x CP),
   the loss, its token count and the gradients are the one-rank ones.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch

from megatron_dllm.diffusion import masks
from megatron_dllm.diffusion.context_split import row_work, split_rows
from megatron_dllm.diffusion.noising import NoiseResult
from megatron_dllm.model.context_parallel import ContextParallelSplit


class MaskSpec(NamedTuple):
    """An attention mask not yet built: what ``masks.dense_mask`` / ``flex_block_mask`` take."""

    kind: str
    seq_len: int
    block_size: Optional[int]
    document_ids: Optional[torch.Tensor]  # [B, L] or None


def split_for(spec: MaskSpec, ranks: int, rank: int = 0) -> ContextParallelSplit:
    """The balanced split of the micro-batch's S positions among ``ranks``, from its mask's row work
    (the same on every rank), as seen by ``rank``."""
    docs = spec.document_ids
    size = None if spec.kind == "bidirectional" else spec.block_size
    if docs is None:
        work = row_work(spec.kind, spec.seq_len, size)
    else:
        work = torch.stack([row_work(spec.kind, spec.seq_len, size, docs[b].cpu()) for b in range(docs.shape[0])])
    return ContextParallelSplit(split_rows(masks.mask_length(spec.kind, spec.seq_len), ranks, work=work), rank)


def local_mask(spec: MaskSpec, rows: torch.Tensor, backend: str, device: str):
    """This rank's rows of the mask against all keys (cached like the one-rank masks)."""
    if backend == "flex":
        return masks.flex_block_mask(spec.kind, spec.seq_len, spec.block_size, spec.document_ids, device=device,
                                     query_rows=rows)
    return masks.dense_mask(spec.kind, spec.seq_len, spec.block_size, spec.document_ids, device=device,
                            query_rows=rows)


def shard(inputs, ranks: int, rank: int, backend: str, device: str):
    """``inputs`` (ModelInputs of the whole micro-batch, ``attention_mask`` a MaskSpec) -> this rank's."""
    spec = inputs.attention_mask
    split = split_for(spec, ranks, rank)
    rows = split.local_rows()
    total = split.total
    holds = torch.zeros(total, dtype=torch.bool)
    holds[rows] = True
    local_of = torch.full((total,), -1, dtype=torch.long)
    local_of[rows] = torch.arange(rows.numel())
    projected = inputs.logits_index.cpu() if inputs.logits_index is not None else torch.arange(total)
    kept = holds[projected].nonzero().flatten()          # positions in the projection order
    main = inputs.targets.shape[1]                        # the first `main` projected rows carry targets
    kept_main, kept_ar = kept[kept < main], kept[kept >= main] - main
    dev_rows = rows.to(inputs.tokens.device)

    def cols(x, index):
        return None if x is None else x.index_select(1, index.to(x.device))

    noise = inputs.noise
    return dataclasses.replace(
        inputs,
        tokens=inputs.tokens.index_select(1, dev_rows),
        position_ids=inputs.position_ids.index_select(1, dev_rows),
        attention_mask=local_mask(spec, rows, backend, device),
        targets=cols(inputs.targets, kept_main),
        noise=NoiseResult(cols(noise.xt, kept_main), cols(noise.noise_mask, kept_main),
                          cols(noise.t_per_token, kept_main)),
        loss_mask=cols(inputs.loss_mask, kept_main),
        logits_index=local_of[projected[kept]],
        ar_targets=cols(inputs.ar_targets, kept_ar),
        ar_mask=cols(inputs.ar_mask, kept_ar),
        cp_split=split,
    )
