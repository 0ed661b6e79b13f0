"""Batch assembly: stack per-sample dicts into batch-first tensors, and document ids from EOD."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch


def document_ids_from_eod(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """0-based id of the document each token belongs to, counted along the last dimension.

    The id increments AFTER each EOD token (an exclusive cumulative sum of ``tokens == eod_id``),
    so an EOD belongs to the document it ends.

    Args:
        tokens: ``[B, L]`` or ``[L]`` integer token ids.
        eod_id: the end-of-document id.

    Returns:
        ``int64`` tensor of the same shape as ``tokens``.

    Example: tokens ``[5, 7, EOD, 3, EOD, 9]`` -> ``[0, 0, 0, 1, 1, 2]``.
    """
    is_eod = (tokens == eod_id).to(torch.long)
    return torch.cumsum(is_eod, dim=-1) - is_eod


def collate(samples: List[Dict[str, torch.Tensor]], sample_indices: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Stack samples of ``build_datasets`` into one micro-batch (batch-first).

    Args:
        samples: B dicts with ``tokens`` LongTensor[L], ``loss_mask`` BoolTensor[L],
            ``document_ids`` LongTensor[L] (other keys are ignored).
        sample_indices: the B global sample indices (seed the noise; see GlobalBatchSampler).

    Returns:
        ``tokens`` [B, L] long (the clean x0), ``loss_mask`` [B, L] bool,
        ``document_ids`` [B, L] long, ``sample_index`` [B] long.
    """
    if len(samples) != len(sample_indices):
        raise ValueError(f"collate got {len(samples)} samples but {len(sample_indices)} sample indices")
    if not samples:
        raise ValueError("collate needs at least one sample")
    lengths = {int(s["tokens"].shape[-1]) for s in samples}
    if len(lengths) != 1:
        raise ValueError(f"samples of one batch must have the same length, got lengths {sorted(lengths)}")
    return {
        "tokens": torch.stack([torch.as_tensor(s["tokens"]).to(torch.long) for s in samples]),
        "loss_mask": torch.stack([torch.as_tensor(s["loss_mask"]).to(torch.bool) for s in samples]),
        "document_ids": torch.stack([torch.as_tensor(s["document_ids"]).to(torch.long) for s in samples]),
        "sample_index": torch.as_tensor([int(i) for i in sample_indices], dtype=torch.long),
    }
