"""Tokenise a JSON-lines corpus into a Megatron indexed dataset (``.bin`` / ``.idx``).

    stats = preprocess_jsonl("corpus.jsonl", "tokenizer.model", "data/corpus", workers=4)
    # -> data/corpus_text_document.bin and data/corpus_text_document.idx

One document per input line: ``json.loads(line)[json_key]`` tokenised (no BOS / EOS added) with
the end-of-document token appended, written with Megatron-Core's ``IndexedDatasetBuilder`` in
input order whatever the number of worker processes (so 1 and N workers give identical bytes).
Blank lines are skipped, and so are documents whose text has no tokens (as Megatron-LM does).

Output is written under temporary names and renamed at the end: a failure (missing input, a line
that is not JSON or lacks the key, Ctrl-C) leaves no half-written ``.bin`` / ``.idx`` behind, and
the output folders this run created are removed again.

Megatron-Core (~4 s to import) is imported only by ``preprocess_jsonl`` once the input file and
the tokenizer have been checked, and its import time is left out of the reported rates.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import IO, Iterator, List, Optional, Tuple

import numpy

from megatron_dllm.data.errors import DataError
from megatron_dllm.data.tokenizer import load_tokenizer


@dataclass
class PreprocessStats:
    """What one preprocessing run wrote."""

    output_prefix: str   # the dataset prefix: '<output-prefix>_<json-key>_document'
    documents: int       # documents written
    tokens: int          # tokens written (EOD included)
    skipped: int         # blank lines and documents without tokens
    input_bytes: int     # bytes of input read
    seconds: float       # wall time of tokenising and writing (after the Megatron-Core import)
    dtype: str           # token dtype in the .bin file

    @property
    def docs_per_s(self) -> float:
        return self.documents / max(self.seconds, 1e-9)

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)


def output_prefix_for(output_prefix: str, json_key: str = "text") -> str:
    """Megatron-LM's naming of the written dataset: ``{output_prefix}_{json_key}_document``."""
    return f"{output_prefix}_{json_key}_document"


# --- work done per line (in the main process or in pool workers) -------------------------------

_WORKER: dict = {}


def _init_worker(tokenizer_model, json_key: str, append_eod: bool) -> None:
    """``tokenizer_model``: a path (pool workers load their own copy) or a loaded Tokenizer."""
    tok = tokenizer_model
    _WORKER["tokenizer"] = load_tokenizer(tok) if isinstance(tok, str) else tok
    _WORKER["key"] = json_key
    _WORKER["append_eod"] = append_eod


def _encode_line(item: Tuple[int, bytes]) -> Tuple[int, str, object, int]:
    """(line number, status, payload, bytes read): status 'ok' (payload: int32 ids [n]),
    'skip' (blank line or no tokens) or 'error' (payload: the message)."""
    lineno, raw = item
    nbytes = len(raw)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return lineno, "error", f"not valid UTF-8 ({exc.reason} at byte {exc.start})", nbytes
    if not line.strip():
        return lineno, "skip", None, nbytes
    try:
        record = json.loads(line)
    except ValueError as exc:
        reason = getattr(exc, "msg", str(exc))
        column = getattr(exc, "colno", None)
        where = f" at column {column}" if column is not None else ""
        return lineno, "error", f"not valid JSON ({reason}{where})", nbytes
    key = _WORKER["key"]
    if not isinstance(record, dict):
        return lineno, "error", f"not a JSON object with key {key!r}", nbytes
    if key not in record:
        keys = ", ".join(repr(k) for k in list(record)[:5])
        return lineno, "error", f"no key {key!r} (keys: {keys}): pass --json-key NAME", nbytes
    text = record[key]
    if not isinstance(text, str):
        return lineno, "error", f"value of {key!r} is a {type(text).__name__}, not a string", nbytes
    tok = _WORKER["tokenizer"]
    ids = tok.encode(text)
    if not ids:
        return lineno, "skip", None, nbytes
    if _WORKER["append_eod"]:
        ids.append(tok.eod_id)
    return lineno, "ok", numpy.asarray(ids, dtype=numpy.int32), nbytes


def _read_lines(path: str) -> Iterator[Tuple[int, bytes]]:
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            yield lineno, raw


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _missing_dirs(prefix: str) -> List[str]:
    """Folders of ``prefix`` that do not exist yet, deepest first; DataError when the first one
    that does exist is not a writable folder."""
    missing = []
    folder = os.path.dirname(os.path.abspath(prefix))
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise DataError(f"--output-prefix {prefix}: {folder} is a file, not a folder: pass a prefix "
                        f"in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"--output-prefix {prefix}: folder {folder} is not writable: pass a prefix "
                        f"in a folder you can write")
    return missing


def _remove_dirs(folders: List[str]) -> None:
    """Remove the folders this run created (deepest first), only while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


# --- the run -------------------------------------------------------------------------------------


def preprocess_jsonl(
    input_path: str,
    tokenizer_model: str,
    output_prefix: str,
    *,
    json_key: str = "text",
    workers: int = 1,
    append_eod: bool = True,
    log_interval: int = 1000,
    chunk_size: int = 64,
    log: Optional[IO[str]] = None,
) -> PreprocessStats:
    """Tokenise ``input_path`` (JSON lines) into ``{output_prefix}_{json_key}_document.bin/.idx``.

    Args:
        input_path: JSON-lines file, one document per line.
        tokenizer_model: sentencepiece ``.model``, HF ``tokenizer.json`` or a directory holding one.
        output_prefix: path prefix of the output; missing directories are created (once the
            first document is ready).
        json_key: key of the text in each JSON object.
        workers: tokenising processes (1: in this process; N > 1: a spawned pool, order kept).
        append_eod: append the tokenizer's end-of-document id to every document.
        log_interval: print a progress line every this many documents (0: never).
        chunk_size: lines sent to a worker at a time.
        log: stream for progress and summary lines (default: stderr).

    Returns:
        PreprocessStats of the run.

    Raises:
        DataError: missing input, unreadable tokenizer, an output prefix in a file or a folder
            that is not writable, a bad line (``file:line: reason``), or no documents at all.
            Nothing is left at the output paths, and no folder this run created.
    """
    log = sys.stderr if log is None else log
    if not os.path.isfile(input_path):
        raise DataError(f"input file {input_path} does not exist: pass --input FILE.jsonl")
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    if log_interval < 0:
        raise DataError(f"--log-interval must be >= 0, got {log_interval}")
    tok = load_tokenizer(tokenizer_model)
    prefix = output_prefix_for(output_prefix, json_key)
    if os.path.isdir(prefix + ".bin") or os.path.isdir(prefix + ".idx"):
        raise DataError(f"{prefix}.bin or .idx is a folder: pass another --output-prefix")
    created = _missing_dirs(prefix)
    tag = f".tmp-{os.getpid()}"
    bin_tmp, idx_tmp = prefix + ".bin" + tag, prefix + ".idx" + tag

    t_import = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Transformer Engine / apex not installed" on import
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    import_s = time.perf_counter() - t_import  # a one-off cost, left out of the rates

    start = time.perf_counter()
    documents = tokens = skipped = nbytes = 0
    builder = None
    dtype = None
    pool = None
    try:
        lines = _read_lines(input_path)
        if workers == 1:
            _init_worker(tok, json_key, append_eod)
            results = map(_encode_line, lines)
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(workers, initializer=_init_worker,
                            initargs=(tokenizer_model, json_key, append_eod))
            results = pool.imap(_encode_line, lines, chunk_size)
        for lineno, status, payload, size in results:
            nbytes += size
            if status == "error":
                raise DataError(f"{input_path}:{lineno}: {payload}")
            if status == "skip":
                skipped += 1
                continue
            if builder is None:  # folders appear only now, and go again if the run fails
                os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
                dtype = DType.optimal_dtype(tok.vocab_size)
                builder = IndexedDatasetBuilder(bin_tmp, dtype=dtype)
            builder.add_document(payload, [int(payload.size)])
            documents += 1
            tokens += int(payload.size)
            if log_interval and documents % log_interval == 0:
                elapsed = max(time.perf_counter() - start, 1e-9)
                print(f"processed {documents} documents ({documents / elapsed:.1f} docs/s, "
                      f"{nbytes / 1e6 / elapsed:.2f} MB/s)", file=log, flush=True)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        if builder is None:
            raise DataError(
                f"{input_path} holds no documents with text under key {json_key!r}: check the "
                f"file and --json-key")
        builder.finalize(idx_tmp)
        # The .idx is renamed last: a reader that finds it also finds the matching .bin.
        _remove(prefix + ".idx")
        os.replace(bin_tmp, prefix + ".bin")
        os.replace(idx_tmp, prefix + ".idx")
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool.join()
        if builder is not None and not builder.data_file.closed:
            builder.data_file.close()
        _remove(bin_tmp)
        _remove(idx_tmp)
        _remove_dirs(created)
        raise
    seconds = time.perf_counter() - start
    stats = PreprocessStats(prefix, documents, tokens, skipped, nbytes, seconds,
                            numpy.dtype(dtype).name)
    print(f"done: {documents} documents, {tokens} tokens ({stats.dtype}), {skipped} skipped, "
          f"{nbytes / 1e6:.2f} MB in {seconds:.2f} s ({stats.docs_per_s:.1f} docs/s, "
          f"{stats.mb_per_s:.2f} MB/s; {import_s:.1f} s importing Megatron-Core before) -> "
          f"{prefix}.bin / .idx", file=log, flush=True)
    return stats
