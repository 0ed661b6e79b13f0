"""Which query rows of the model input each context-parallel (CP) rank holds, and how even the work is.

Under context parallelism each of N ranks holds S / N of the S positions of the model input (S = 2L
for the block-diffusion layout ``[xt ; x0]``, L otherwise) and attends from those rows to the keys
its mask allows. The attention work of a row is its number of allowed keys, and under the masks of
this project it is far from uniform:

* block diffusion: a noisy row of block b sees its own block plus the clean blocks before it, a clean
  row the clean blocks up to its own, so both halves are ramps (work grows with b);
* AR (block-causal with block 1) is the causal triangle; MDLM (bidirectional) is flat;
* packed documents restart every ramp at each document start (MDLM: a row's work is its document's
  length).

Splitting the input into N contiguous slices gives the last rank of each ramp most of the work.
:func:`split_rows` cuts the input into equal chunks and deals them to the ranks:

* ``"balanced"`` (default): the chunks sorted by their work (the micro-batch's :func:`row_work`,
  summed over its samples), heaviest first, dealt in snake order (0, 1, .., N-1, N-1, .., 0, 0, ..).
  It depends on the documents of the micro-batch, so every CP rank computes it from the same
  document ids (deterministically: a stable sort of integer counts); it balances any mask and any
  document layout (``bench/cp_balance.py``: <= 1.04 x the mean over the README's table);
* ``"snake"``: the chunks in sequence order dealt in snake order, independent of the batch; even for
  smooth ramps, not for short packed documents;
* ``"zigzag"``: Megatron-Core's split for causal attention (2N chunks, rank r: chunks r and 2N-1-r);
* ``"contiguous"``: N slices.

Every strategy only permutes rows: positions, noise, labels and the loss of a position are the same
whatever N is (each rank computes the terms of its rows; their sum over ranks is the CP = 1 sum).
Chunks are at most 128 positions long (FlexAttention's tile), so a rank's rows stay tile-aligned runs
of the input.

:func:`row_work` counts allowed keys per row in O(S) from the document boundaries (packed documents
are contiguous runs of ids), and :func:`imbalance` is the busiest rank's work over the mean, the
balance figure of the README's table.

Pure torch, like the rest of this package (tests/unit/test_diffusion_purity.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from .masks import KINDS

STRATEGIES = ("balanced", "snake", "zigzag", "contiguous")
MAX_CHUNK = 128  # FlexAttention's tile
MIN_CHUNKS_PER_RANK = 16  # enough chunks per rank for the snake deal to even out the work


def _snake_owner(order: torch.Tensor, ranks: int) -> torch.Tensor:
    """owner[chunk] when the chunks in ``order`` are dealt 0..N-1, N-1..0, 0..N-1, ..."""
    deal = torch.arange(order.numel())
    round_, slot = deal // ranks, deal % ranks
    owner = torch.where(round_ % 2 == 0, slot, ranks - 1 - slot)
    return torch.empty_like(owner).scatter_(0, order, owner)


def default_chunk(total: int, ranks: int) -> int:
    """Chunk length for ``total`` positions over ``ranks``: the largest power of two <= 128 that leaves
    every rank an even number (>= 16 where possible) of chunks."""
    per_rank = total // ranks
    size = MAX_CHUNK
    while size > 1 and (per_rank % (2 * size) or per_rank // size < MIN_CHUNKS_PER_RANK):
        size //= 2
    return size


def split_rows(total: int, ranks: int, strategy: str = "balanced", chunk: Optional[int] = None,
               work: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[N, total / N]`` long: row r holds the input positions of CP rank r, in increasing order.

    Args:
        total: S, the model input's length (2L for ``[xt ; x0]``).
        ranks: N, the context-parallel size.
        strategy: "balanced" (default), "snake", "zigzag" (Megatron-Core's 2N chunks) or "contiguous".
        chunk: balanced / snake: chunk length (default :func:`default_chunk`); must divide S / N.
        work: balanced only: [S] (or [B, S], summed over B) allowed keys per row, from :func:`row_work`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown CP split strategy {strategy!r}; expected one of {STRATEGIES}")
    if ranks < 1 or total < 1:
        raise ValueError(f"CP split needs positive sizes, got {total} positions over {ranks} ranks")
    if strategy == "contiguous":
        if total % ranks:
            raise ValueError(f"{total} positions do not split into {ranks} equal CP slices")
        return torch.arange(total).view(ranks, total // ranks)
    if strategy == "zigzag":
        if total % (2 * ranks):
            raise ValueError(f"zigzag CP split: {total} positions are not a multiple of 2 x CP = {2 * ranks} "
                             "(make the sequence length a multiple of 2 x --context-parallel-size)")
        pieces = torch.arange(total).view(2 * ranks, total // (2 * ranks))
        return torch.stack([torch.cat([pieces[r], pieces[2 * ranks - 1 - r]]) for r in range(ranks)])
    size = chunk or default_chunk(total, ranks)
    if total % (ranks * size):
        raise ValueError(f"{strategy} CP split: {total} positions do not split into chunks of {size} shared "
                         f"equally by {ranks} ranks; make the sequence length a multiple of {ranks} x {size}")
    chunks = total // size
    if strategy == "snake":
        order = torch.arange(chunks)
    else:
        if work is None:
            raise ValueError("balanced CP split needs the rows' work (row_work of the micro-batch)")
        work = work.reshape(-1, total).sum(dim=0) if work.dim() > 1 else work
        if work.numel() != total:
            raise ValueError(f"balanced CP split: work has {work.numel()} rows, the input {total}")
        order = torch.argsort(-work.to(torch.long).view(chunks, size).sum(dim=-1), stable=True)
    owner = _snake_owner(order, ranks)
    pieces = torch.arange(total).view(chunks, size)
    return torch.stack([pieces[owner == r].reshape(-1) for r in range(ranks)])


def _document_bounds(document_ids: Optional[torch.Tensor], seq_len: int):
    """(start, end) [L] of each position's document; documents are contiguous runs of equal ids."""
    position = torch.arange(seq_len)
    if document_ids is None:
        return torch.zeros(seq_len, dtype=torch.long), torch.full((seq_len,), seq_len, dtype=torch.long)
    docs = document_ids.reshape(-1).to(torch.long)
    if docs.numel() != seq_len:
        raise ValueError(f"document_ids must have L = {seq_len} entries, got {docs.numel()}")
    new = torch.ones(seq_len, dtype=torch.bool)
    new[1:] = docs[1:] != docs[:-1]
    start = torch.cummax(torch.where(new, position, torch.zeros_like(position)), dim=0).values
    last = torch.ones(seq_len, dtype=torch.bool)
    last[:-1] = new[1:]
    end_at = torch.where(last, position + 1, torch.full_like(position, seq_len))
    end = torch.flip(torch.cummin(torch.flip(end_at, [0]), dim=0).values, [0])
    return start, end


def row_work(kind: str, seq_len: int, block_size: Optional[int] = None,
             document_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Allowed keys of every query row of the mask ``kind`` (``diffusion.masks`` kinds), [S] long.

    Equals ``dense_mask(kind, seq_len, block_size, document_ids).sum(-1)`` for documents given as
    contiguous runs of ids ([L]; the packed layout), computed without the S x S mask.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {KINDS}")
    start, end = _document_bounds(document_ids, seq_len)
    position = torch.arange(seq_len)
    if kind == "bidirectional":
        return end - start
    block_begin = (position // block_size) * block_size
    block_end = torch.minimum(block_begin + block_size, end)
    through_block = block_end - start                      # same document, key block <= query block
    if kind == "block_causal":
        return through_block
    noisy = (block_end - torch.maximum(block_begin, start)) + (block_begin - start).clamp(min=0)
    clean = position - start + 1 if kind == "block_diffusion_causal_clean" else through_block
    return torch.cat([noisy, clean])


def rank_work(work: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[N] total work of each rank's rows (``rows`` from :func:`split_rows`)."""
    return work[rows].sum(dim=-1)


def imbalance(work: torch.Tensor, rows: torch.Tensor) -> float:
    """Busiest rank's allowed (query, key) pairs over the mean: 1.0 is perfect balance."""
    per_rank = rank_work(work, rows).to(torch.float64)
    return float(per_rank.max() / per_rank.mean())
