"""Datasets over the SFT and DPO data of ``tools/preprocess_data.py --format sft|dpo``.

    sft = SFTDataset("data/chat_sft", seq_length=L, eod_id=tok.eod_id, block_size=32, seed=1234)
    sft[i]   # {"tokens": LongTensor[L], "loss_mask": BoolTensor[L], "document_ids": LongTensor[L]}
    dpo = DPOPairDataset("data/pairs_dpo", seq_length=L, eod_id=tok.eod_id, block_size=32, seed=1234)
    dpo[i]   # {"chosen": {tokens, loss_mask, document_ids}, "rejected": {...}} of one pair

The keys are those of ``datasets.SAMPLE_KEYS`` (what ``batch.collate`` stacks); ``loss_mask`` is 1
only on assistant replies, their EOD and the EOS padding to a multiple of ``block_size``
(``sft_packing``): prompt tokens never carry loss. ``document_ids`` come from the conversation
boundaries, not from EOD tokens (a multi-turn conversation holds an EOD after each reply), so they
must not be recomputed with ``batch.document_ids_from_eod``.

SFT samples pack whole conversations (``sft_packing.pack_greedy``) in an order shuffled by
``seed``; with ``num_samples`` the conversations are repeated in epochs, each shuffled with its own
seed, until there are that many samples. A DPO sample is one pair, each side one conversation in
its own window (padded like SFT, the rest EOS without loss), pairs in an order shuffled by
``seed`` (also repeated in epochs with ``num_samples``). ``split_document_ranges`` cuts a
dataset into train / valid / test ranges as ``--split`` does. A conversation longer than the
window is cut to it; how many were cut is in ``truncated`` and a warning says so once.
Everything depends only on the arguments.
"""

from __future__ import annotations

import os
import warnings
from typing import List, Optional, Tuple

import numpy
import torch

from megatron_dllm.data.errors import DataError
from megatron_dllm.data.preprocess import MASK_SUFFIXES
from megatron_dllm.data.sft_packing import (pack_greedy, packed_sample, pad_to_block_multiple,
                                            padded_lengths)


def _open_pair(prefix: str, format: str):
    """(tokens, loss mask) Megatron IndexedDatasets of ``prefix``, checked to be aligned."""
    for suffix in MASK_SUFFIXES:
        for ext in (".bin", ".idx"):
            if not os.path.isfile(prefix + suffix + ext):
                raise DataError(
                    f"data file {prefix}{suffix}{ext} does not exist: write it with "
                    f"tools/preprocess_data.py --format {format} (its --output-prefix P writes "
                    f"P_{format}_tokens / P_{format}_lossmask; pass P_{format})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    tokens = IndexedDataset(prefix + MASK_SUFFIXES[0])
    mask = IndexedDataset(prefix + MASK_SUFFIXES[1])
    if (not numpy.array_equal(tokens.sequence_lengths, mask.sequence_lengths)
            or not numpy.array_equal(tokens.document_indices, mask.document_indices)):
        raise DataError(f"{prefix}{MASK_SUFFIXES[0]} and {prefix}{MASK_SUFFIXES[1]} do not have the "
                        f"same sequences: write both again with tools/preprocess_data.py")
    per_document = numpy.diff(tokens.document_indices)
    wanted = 1 if format == "sft" else 2
    if len(per_document) == 0 or not bool((per_document == wanted).all()):
        raise DataError(f"{prefix} does not hold {wanted} sequence(s) per document, as --format "
                        f"{format} writes: pass a dataset written with --format {format}")
    return tokens, mask


def _range(document_range: Optional[Tuple[int, int]], count: int) -> numpy.ndarray:
    begin, end = (0, count) if document_range is None else map(int, document_range)
    if not 0 <= begin < end <= count:
        raise DataError(f"document_range {document_range} is not inside [0, {count}) or is empty")
    return numpy.arange(begin, end, dtype=numpy.int64)


def _check_lengths(seq_length: int, block_size: int) -> None:
    if block_size < 1 or seq_length < block_size or seq_length % block_size:
        raise DataError(f"--seq-length {seq_length} must be a positive multiple of the SFT block "
                        f"size {block_size}, so that packed conversations start on block boundaries")


def _order(items: numpy.ndarray, seed: int, epoch: int, shuffle: bool) -> numpy.ndarray:
    """``items`` in the order of epoch ``epoch``: a permutation seeded by (seed, epoch)."""
    if not shuffle:
        return items
    return items[numpy.random.default_rng([int(seed), int(epoch)]).permutation(len(items))]


def split_document_ranges(prefix: str, split: str = "969,30,1", format: str = "sft"
                          ) -> List[Optional[Tuple[int, int]]]:
    """(begin, end) conversation (sft) or pair (dpo) ranges of the train, valid and test splits of
    ``prefix``, cut as Megatron cuts documents for ``--split`` (None for an empty split); pass
    one as ``document_range``."""
    from megatron_dllm.data.datasets import _split_bounds, parse_split

    tokens, _ = _open_pair(prefix, format)
    bounds = _split_bounds(parse_split(split), len(tokens.document_indices) - 1)
    return [None if b is None or b[1] <= b[0] else b for b in bounds]


def _torch(sample: dict) -> dict:
    return {"tokens": torch.from_numpy(sample["tokens"]),
            "loss_mask": torch.from_numpy(sample["loss_mask"]),
            "document_ids": torch.from_numpy(sample["document_ids"])}


class _ConversationReader:
    """Conversation j of a dataset as padded (tokens, loss mask) numpy arrays."""

    def __init__(self, prefix: str, format: str, block_size: int, eod_id: int) -> None:
        self.tokens, self.mask = _open_pair(prefix, format)
        self.block_size = block_size
        self.eod_id = int(eod_id)

    def __call__(self, sequence: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
        return pad_to_block_multiple(self.tokens[int(sequence)].astype(numpy.int64),
                                     self.mask[int(sequence)].astype(bool), self.block_size,
                                     self.eod_id)

    def padded_lengths(self, sequences: numpy.ndarray) -> numpy.ndarray:
        return padded_lengths(self.tokens.sequence_lengths[sequences].astype(numpy.int64),
                              self.block_size)


class _ChatDataset(torch.utils.data.Dataset):
    """What both readers share: the checked files, the window length and the truncation count."""

    def _open(self, prefix: str, format: str, seq_length: int, eod_id: int, block_size: int,
              document_range: Optional[Tuple[int, int]]) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Returns (documents used, padded lengths of their sequences in file order)."""
        _check_lengths(seq_length, block_size)
        self.seq_length = int(seq_length)
        self.eod_id = int(eod_id)
        self.read = _ConversationReader(prefix, format, block_size, eod_id)
        documents = _range(document_range, len(self.read.tokens.document_indices) - 1)
        per_document = 1 if format == "sft" else 2
        sequences = (per_document * documents[:, None] + numpy.arange(per_document)).reshape(-1)
        lengths = self.read.padded_lengths(sequences)
        self.truncated = int((lengths > seq_length).sum())
        if self.truncated:
            what = "conversations" if format == "sft" else "chosen / rejected conversations"
            warnings.warn(f"{self.truncated} of {len(sequences)} {what} of {prefix} are longer "
                          f"than --seq-length {seq_length} after padding to a multiple of "
                          f"{block_size}: cut to {seq_length} tokens")
        return documents, lengths


class SFTDataset(_ChatDataset):
    """Fixed-length samples of packed SFT conversations (see the module docstring).

    Args:
        prefix: ``P_sft`` as written by ``preprocess_data.py --format sft --output-prefix P``.
        seq_length: L, a multiple of ``block_size``.
        eod_id: the tokenizer's end-of-document id (the padding token).
        block_size: conversations are padded with supervised EOS to a multiple of it (default 32).
        seed: shuffles the conversations (epoch e uses the seed pair (seed, e)).
        num_samples: repeat epochs until at least this many samples (default: one epoch).
        document_range: (begin, end): use conversations begin..end-1 only (a train / valid split).
        shuffle: False keeps the file order (every epoch).

    Attributes:
        truncated: conversations cut to L (counted once, over one epoch).
    """

    def __init__(self, prefix: str, seq_length: int, eod_id: int, *, block_size: int = 32,
                 seed: int = 0, num_samples: Optional[int] = None,
                 document_range: Optional[Tuple[int, int]] = None, shuffle: bool = True) -> None:
        conversations, lengths = self._open(prefix, "sft", seq_length, eod_id, block_size,
                                            document_range)
        self._orders, self._bounds, self._starts = [], [], [0]
        epoch = 0
        positions = numpy.arange(len(conversations))
        while epoch == 0 or (num_samples is not None and self._starts[-1] < num_samples):
            perm = _order(positions, seed, epoch, shuffle)
            bounds = pack_greedy(lengths[perm], self.seq_length)
            self._orders.append(conversations[perm])
            self._bounds.append(bounds)
            self._starts.append(self._starts[-1] + len(bounds) - 1)
            epoch += 1

    def __len__(self) -> int:
        return self._starts[-1]

    def window(self, idx: int) -> numpy.ndarray:
        """The conversation indices (in the files) packed into sample ``idx``, in order."""
        if not 0 <= int(idx) < len(self):
            raise IndexError(f"sample {idx} is outside [0, {len(self)})")
        epoch = int(numpy.searchsorted(self._starts, int(idx), side="right")) - 1
        w = int(idx) - self._starts[epoch]
        bounds = self._bounds[epoch]
        return self._orders[epoch][bounds[w]:bounds[w + 1]]

    def __getitem__(self, idx: int) -> dict:
        """``tokens`` LongTensor[L], ``loss_mask`` BoolTensor[L], ``document_ids`` LongTensor[L]."""
        conversations = [self.read(j) for j in self.window(idx)]
        return _torch(packed_sample(conversations, self.seq_length, self.eod_id))


class DPOPairDataset(_ChatDataset):
    """One preference pair per sample: ``{"chosen": sample, "rejected": sample}`` (see above).

    Args as SFTDataset (``prefix`` is ``P_dpo``); ``document_range`` selects pairs and
    ``num_samples`` repeats them in epochs, each in its own seeded order.

    Attributes:
        truncated: conversations (chosen or rejected) cut to L.
    """

    def __init__(self, prefix: str, seq_length: int, eod_id: int, *, block_size: int = 32,
                 seed: int = 0, num_samples: Optional[int] = None,
                 document_range: Optional[Tuple[int, int]] = None, shuffle: bool = True) -> None:
        pairs, _ = self._open(prefix, "dpo", seq_length, eod_id, block_size, document_range)
        epochs = 1 if num_samples is None else max(1, -(-int(num_samples) // len(pairs)))
        self.pairs = numpy.concatenate([_order(pairs, seed, e, shuffle) for e in range(epochs)])

    def __len__(self) -> int:
        return len(self.pairs)

    def pair(self, idx: int) -> int:
        """The index (in the files) of the pair of sample ``idx``."""
        if not 0 <= int(idx) < len(self):
            raise IndexError(f"sample {idx} is outside [0, {len(self)})")
        return int(self.pairs[int(idx)])

    def __getitem__(self, idx: int) -> dict:
        """``{"chosen": {...}, "rejected": {...}}``, each with tokens / loss_mask / document_ids [L]."""
        j = self.pair(idx)
        return {side: _torch(packed_sample([self.read(2 * j + k)], self.seq_length, self.eod_id))
                for k, side in enumerate(("chosen", "rejected"))}

