"""Padding and packing of SFT conversations into fixed-length samples (pure numpy).

    tokens, loss_mask = pad_to_block_multiple(tokens, loss_mask, block_size=32, eos_id=tok.eod_id)
    bounds = pack_greedy(lengths, seq_length=L)      # conversations order[bounds[w]:bounds[w+1]] fill window w
    sample = packed_sample(conversations, L, eos_id)  # tokens, loss_mask, document_ids (numpy)

Padding (METHOD.md 5 and 7.1, LLaDA2.0 "effective length"): a conversation is extended with EOS to
the next multiple of the block size, so that, packed one after another into a window whose length
is a multiple of the block size, every conversation starts on a block boundary. The padding carries
the loss mask of the conversation's last token (the EOD of the assistant's reply, so: supervised);
the model learns to end its answer with EOS, as LLaDA's length learning does.

Packing: conversations, in the given order, go into the current window while they fit; the next
one that does not fit starts a new window. A conversation longer than the window is cut to the
window length (and fills a window alone). The rest of a window is filled with EOS tokens that
carry no loss and form a document of their own (as the padding of pretraining windows does).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy


def pad_to_block_multiple(tokens: numpy.ndarray, loss_mask: numpy.ndarray, block_size: int,
                          eos_id: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """``tokens`` [n] and ``loss_mask`` [n] extended with EOS to ``ceil(n / block_size) *
    block_size`` positions; the padding's loss mask is that of the last token (0 when n == 0)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n = len(tokens)
    pad = -n % block_size
    fill = int(loss_mask[-1]) if n else 0
    return (numpy.concatenate([numpy.asarray(tokens), numpy.full(pad, eos_id, dtype=numpy.int64)])
            .astype(numpy.int64),
            numpy.concatenate([numpy.asarray(loss_mask, dtype=bool), numpy.full(pad, bool(fill))]))


def padded_lengths(lengths, block_size: int):
    """Lengths (an int or an integer array) after ``pad_to_block_multiple``."""
    return -(-lengths // block_size) * block_size


def pack_greedy(lengths: Sequence[int], seq_length: int) -> numpy.ndarray:
    """Window bounds for conversations of ``lengths`` (already padded) taken in order.

    Returns:
        int64 [W + 1]: window w holds items ``bounds[w]:bounds[w + 1]`` of the order; every
        window holds at least one item, and their lengths (each capped at ``seq_length``) add up
        to at most ``seq_length``.
    """
    bounds: List[int] = [0]
    used = 0
    for i, length in enumerate(numpy.minimum(numpy.asarray(lengths, dtype=numpy.int64),
                                             seq_length).tolist()):
        if used and used + length > seq_length:
            bounds.append(i)
            used = 0
        used += length
    if len(lengths):
        bounds.append(len(lengths))
    return numpy.asarray(bounds, dtype=numpy.int64)


def packed_sample(conversations: Sequence[Tuple[numpy.ndarray, numpy.ndarray]], seq_length: int,
                  eos_id: int) -> dict:
    """One window from (tokens, loss mask) pairs (padded already; each cut to ``seq_length``).

    Returns numpy arrays of length ``seq_length``: ``tokens`` int64, ``loss_mask`` bool and
    ``document_ids`` int64 (conversation k of the window has id k; the EOS fill after the last
    conversation has the next id and no loss).
    """
    tokens = numpy.full(seq_length, eos_id, dtype=numpy.int64)
    loss_mask = numpy.zeros(seq_length, dtype=bool)
    document_ids = numpy.full(seq_length, len(conversations), dtype=numpy.int64)
    at = 0
    for k, (ids, mask) in enumerate(conversations):
        n = min(len(ids), seq_length - at)
        tokens[at:at + n] = ids[:n]
        loss_mask[at:at + n] = mask[:n]
        document_ids[at:at + n] = k
        at += n
    return {"tokens": tokens, "loss_mask": loss_mask, "document_ids": document_ids}
