"""Reading and checking a Megatron indexed dataset (``prefix.bin`` / ``prefix.idx``) without Megatron.

    info = inspect_indexed_dataset("data/corpus_text_document")      # header, arrays, .bin length
    check_token_ids(info, vocab_size=tok.vocab_size)                   # every token id < vocab_size

``.idx`` layout (Megatron-Core's ``IndexedDatasetBuilder``, version 1): the 9-byte magic
``MMIDIDX\\0\\0``, version (u64), dtype code (u8), N sequences (u64), D + 1 document bounds (u64),
then sequence lengths int32[N], byte pointers into ``.bin`` int64[N], document bounds int64[D + 1].
A valid index has lengths >= 0, pointers that start at 0 and advance by length x itemsize, the last
sequence ending exactly at the end of ``.bin``, and bounds rising from 0 to N. Megatron reads these
arrays as they are, so a corrupt one would silently train on wrong windows: every check here is
vectorised and runs over the arrays in bounded chunks.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy

from megatron_dllm.data.errors import DataError

_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64",
               7: "float32", 8: "uint16"}
_HEADER = 34
_CHUNK = 1 << 24  # array entries (or tokens) examined per step: bounds the memory of every check


@dataclass
class IndexedDatasetInfo:
    """What the ``.idx`` file of a dataset says (arrays checked against each other and ``.bin``)."""

    prefix: str
    num_sequences: int   # documents as Megatron's GPTDataset counts them (one sequence each)
    num_documents: int
    dtype: str


def _rewrite_hint(prefix: str) -> str:
    return f"rewrite {prefix}.bin/.idx with tools/preprocess_data.py"


def inspect_indexed_dataset(prefix: str) -> IndexedDatasetInfo:
    """Check that ``prefix.bin`` and ``prefix.idx`` exist and agree; read the ``.idx`` header.

    Checks the header, the file size the header implies, and the three arrays (lengths, pointers,
    document bounds) against each other and against the length of ``.bin``.

    Raises:
        DataError: a missing file (named, with the fix), or a truncated / corrupt ``.idx``.
    """
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise DataError(
                f"data file {path} does not exist: write {prefix}.bin/.idx with "
                f"tools/preprocess_data.py (its --output-prefix P writes P_text_document.*) and "
                f"pass --data-path {os.path.basename(prefix)} with its directory")

    def corrupt(reason):
        return DataError(f"index file {idx_path} is corrupt ({reason}): {_rewrite_hint(prefix)}")

    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as handle:
        head = handle.read(_HEADER)
    if len(head) < _HEADER:
        raise corrupt(f"{idx_size} bytes, shorter than the {_HEADER}-byte header")
    if head[:9] != _IDX_MAGIC:
        raise corrupt("bad magic, not a Megatron MMIDIDX index")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:_HEADER])
    if version != 1:
        raise corrupt(f"version {version}, expected 1")
    if code not in _IDX_DTYPES:
        raise corrupt(f"unknown dtype code {code}")
    expected = _HEADER + n_seq * 4 + n_seq * 8 + n_doc * 8
    if idx_size != expected:
        raise corrupt(f"{idx_size} bytes where its header of {n_seq} sequences and {n_doc} "
                      f"document bounds needs {expected}")
    if n_doc < 1:
        raise corrupt("no document bounds")
    itemsize = numpy.dtype(_IDX_DTYPES[code]).itemsize
    bin_size = os.path.getsize(bin_path)
    lengths = numpy.memmap(idx_path, dtype="<i4", mode="r", offset=_HEADER, shape=(n_seq,)) \
        if n_seq else numpy.zeros(0, "<i4")
    pointers = numpy.memmap(idx_path, dtype="<i8", mode="r", offset=_HEADER + 4 * n_seq,
                            shape=(n_seq,)) if n_seq else numpy.zeros(0, "<i8")
    bounds = numpy.memmap(idx_path, dtype="<i8", mode="r", offset=_HEADER + 12 * n_seq, shape=(n_doc,))
    reason = _array_problem(lengths, pointers, bounds, itemsize)
    if reason:
        raise corrupt(reason)
    if n_seq:
        end = int(pointers[-1]) + int(lengths[-1]) * itemsize
        if end != bin_size:
            raise DataError(
                f"data file {bin_path} ({bin_size} bytes) does not match its index {idx_path} "
                f"(which ends at byte {end}): {_rewrite_hint(prefix)}")
    return IndexedDatasetInfo(prefix, int(n_seq), int(n_doc) - 1, _IDX_DTYPES[code])


def _array_problem(lengths, pointers, bounds, itemsize: int) -> Optional[str]:
    """Why the index arrays are inconsistent, or None. Chunked, vectorised."""
    n_seq = len(lengths)
    if int(bounds[0]) != 0:
        return f"first document bound {int(bounds[0])} != 0"
    if int(bounds[-1]) != n_seq:
        return f"last document bound {int(bounds[-1])} != {n_seq} sequences"
    for start in range(0, len(bounds) - 1, _CHUNK):
        part = numpy.asarray(bounds[start:start + _CHUNK + 1])
        bad = numpy.flatnonzero(part[1:] < part[:-1])
        if bad.size:
            return f"document bounds decrease at entry {start + int(bad[0]) + 1}"
    if n_seq and int(pointers[0]) != 0:
        return f"the first sequence starts at byte {int(pointers[0])}, not 0"
    for start in range(0, n_seq, _CHUNK):
        size = numpy.asarray(lengths[start:start + _CHUNK], dtype=numpy.int64)
        negative = numpy.flatnonzero(size < 0)
        if negative.size:
            i = start + int(negative[0])
            return f"sequence {i} has length {int(lengths[i])}"
        ptr = numpy.asarray(pointers[start:start + _CHUNK + 1])
        step = size[:len(ptr) - 1] * itemsize
        bad = numpy.flatnonzero(ptr[1:] != ptr[:-1] + step)
        if bad.size:
            i = start + int(bad[0])
            return (f"sequence {i} of length {int(lengths[i])} starts at byte {int(pointers[i])} "
                    f"but sequence {i + 1} at byte {int(pointers[i + 1])}: the lengths and "
                    f"pointers disagree")
    return None


def check_token_ids(info: IndexedDatasetInfo, vocab_size: int) -> None:
    """Raise DataError when a token id in ``info.prefix + '.bin'`` is negative or >= ``vocab_size``.

    One pass over the memory-mapped tokens in chunks (reads the whole file once; skipped when the
    file's dtype cannot hold an id outside ``[0, vocab_size)``).
    """
    dtype = numpy.dtype(info.dtype)
    if dtype.kind not in "iu":
        raise DataError(f"data file {info.prefix}.bin stores {info.dtype} values, not token ids: "
                        f"{_rewrite_hint(info.prefix)}")
    limits = numpy.iinfo(dtype)
    if limits.min >= 0 and limits.max < vocab_size:
        return
    bin_path = info.prefix + ".bin"
    count = os.path.getsize(bin_path) // dtype.itemsize
    if count == 0:
        return
    tokens = numpy.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))
    for start in range(0, count, _CHUNK):
        part = numpy.asarray(tokens[start:start + _CHUNK])
        if int(part.max()) < vocab_size and int(part.min()) >= 0:
            continue
        where = start + int(numpy.flatnonzero((part < 0) | (part >= vocab_size))[0])
        raise DataError(
            f"data file {bin_path} holds token id {int(tokens[where])} (token {where}) but the "
            f"tokenizer has {vocab_size} ids: the data was written with another tokenizer; pass "
            f"the --tokenizer-model it was made with, or rewrite the data with "
            f"tools/preprocess_data.py --tokenizer-model <the one you train with>")
