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

Formats (``format=``; the records and the chat templates are described in ``sft_records.py`` and
``chat_template.py``):
  * ``pretrain``: as above, ``{output_prefix}_{json_key}_document.bin/.idx``.
  * ``sft``: one conversation per line -> ``{output_prefix}_sft_tokens.bin/.idx`` (token ids) and
    ``{output_prefix}_sft_lossmask.bin/.idx`` (uint8, 1 where the token carries loss), with the
    same sequence lengths: document i of both is conversation i, one sequence each.
  * ``dpo``: one preference pair per line -> ``{output_prefix}_dpo_tokens`` and
    ``{output_prefix}_dpo_lossmask``; document i is pair i and holds two sequences, 2i the
    chosen conversation and 2i + 1 the rejected one (prompt + reply, loss on the reply only).
The dataset prefix to read (``PreprocessStats.output_prefix``) is ``{output_prefix}_sft`` /
``{output_prefix}_dpo`` for these (``sft_dataset.py`` appends ``_tokens`` / ``_lossmask``).
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

from megatron_dllm.data.chat_template import encode_conversation, load_chat_template
from megatron_dllm.data.errors import DataError
from megatron_dllm.data.sft_records import RecordError, dpo_pair, sft_conversation
from megatron_dllm.data.tokenizer import load_tokenizer

FORMATS = ("pretrain", "sft", "dpo")
MASK_SUFFIXES = ("_tokens", "_lossmask")
"""Files of an sft / dpo dataset prefix P: P_tokens.bin/.idx and P_lossmask.bin/.idx."""
_UNITS = {"pretrain": "documents", "sft": "conversations", "dpo": "pairs"}


@dataclass
class PreprocessStats:
    """What one preprocessing run wrote."""

    output_prefix: str   # the dataset prefix: '<output-prefix>_<json-key>_document' (pretrain),
    #                      '<output-prefix>_sft' / '<output-prefix>_dpo' (files add _tokens, _lossmask)
    documents: int       # documents written (conversations for sft, pairs for dpo)
    tokens: int          # tokens written (EOD included)
    skipped: int         # blank lines and documents without tokens
    input_bytes: int     # bytes of input read
    seconds: float       # wall time of tokenising and writing (after the Megatron-Core import)
    dtype: str           # token dtype in the .bin file
    supervised: int = 0  # sft / dpo: tokens whose loss mask is 1

    @property
    def docs_per_s(self) -> float:
        return self.documents / max(self.seconds, 1e-9)

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)


def output_prefix_for(output_prefix: str, json_key: str = "text", format: str = "pretrain") -> str:
    """The written dataset's prefix: Megatron-LM's ``{output_prefix}_{json_key}_document`` for
    pretraining data, ``{output_prefix}_sft`` / ``{output_prefix}_dpo`` for the other formats."""
    if format == "pretrain":
        return f"{output_prefix}_{json_key}_document"
    return f"{output_prefix}_{format}"


def _file_prefixes(prefix: str, format: str) -> List[str]:
    """The .bin/.idx pairs a format writes: one for pretrain, tokens and loss mask otherwise."""
    return [prefix] if format == "pretrain" else [prefix + suffix for suffix in MASK_SUFFIXES]


# --- work done per line (in the main process or in pool workers) -------------------------------

_WORKER: dict = {}


def _init_worker(tokenizer_model, json_key: str, append_eod: bool, format: str = "pretrain",
                 chat_template="auto") -> None:
    """``tokenizer_model``: a path (pool workers load their own copy) or a loaded Tokenizer;
    ``chat_template``: a spec for ``load_chat_template`` or a loaded template."""
    tok = tokenizer_model
    _WORKER["tokenizer"] = load_tokenizer(tok) if isinstance(tok, str) else tok
    _WORKER["key"] = json_key
    _WORKER["append_eod"] = append_eod
    _WORKER["format"] = format
    if format != "pretrain":
        spec = chat_template
        _WORKER["template"] = (load_chat_template(spec, _WORKER["tokenizer"])
                               if isinstance(spec, str) else spec)


def _encode_text(record) -> Tuple[str, object]:
    """Pretraining: ('ok', ((ids,), [n])), ('skip', None) or ('error', message)."""
    key = _WORKER["key"]
    if not isinstance(record, dict):
        return "error", f"not a JSON object with key {key!r}"
    if key not in record:
        keys = ", ".join(repr(k) for k in list(record)[:5])
        return "error", f"no key {key!r} (keys: {keys}): pass --json-key NAME"
    text = record[key]
    if not isinstance(text, str):
        return "error", f"value of {key!r} is a {type(text).__name__}, not a string"
    tok = _WORKER["tokenizer"]
    ids = tok.encode(text)
    if not ids:
        return "skip", None
    if _WORKER["append_eod"]:
        ids.append(tok.eod_id)
    return "ok", ((numpy.asarray(ids, dtype=numpy.int32),), [len(ids)])


def _encode_chat(record) -> Tuple[str, object]:
    """SFT / DPO: ('ok', ((ids, loss mask), sequence lengths)) or ('error', message)."""
    tok, template = _WORKER["tokenizer"], _WORKER["template"]
    try:
        if _WORKER["format"] == "sft":
            encoded = [encode_conversation(tok, template, sft_conversation(record), "all")]
        else:
            encoded = [encode_conversation(tok, template, conversation, "last")
                       for conversation in dpo_pair(record)]
    except (RecordError, ValueError) as exc:
        return "error", str(exc)
    ids = numpy.asarray([i for seq, _ in encoded for i in seq], dtype=numpy.int32)
    mask = numpy.asarray([m for _, seq in encoded for m in seq], dtype=numpy.uint8)
    return "ok", ((ids, mask), [len(seq) for seq, _ in encoded])


def _encode_line(item: Tuple[int, bytes]) -> Tuple[int, str, object, int]:
    """(line number, status, payload, bytes read): status 'ok' (payload: (arrays, one per output
    file, and the sequence lengths of the document)), 'skip' (blank line or no tokens) or
    'error' (payload: the message)."""
    lineno, raw = item
    nbytes = len(raw)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return lineno, "error", f"not valid UTF-8 ({exc.reason} at byte {exc.start})", nbytes
    if not line.strip():
        return lineno, "skip", None, nbytes
    try:
        record = json.loads(line.rstrip("\r\n"))  # so that a column past the end is on this line
    except ValueError as exc:
        reason = getattr(exc, "msg", str(exc))
        column = getattr(exc, "colno", None)
        where = f" at column {column}" if column is not None else ""
        return lineno, "error", f"not valid JSON ({reason}{where})", nbytes
    encode = _encode_text if _WORKER["format"] == "pretrain" else _encode_chat
    status, payload = encode(record)
    return lineno, status, payload, nbytes


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
    format: str = "pretrain",
    chat_template: str = "auto",
) -> PreprocessStats:
    """Tokenise ``input_path`` (JSON lines) into ``{output_prefix}_{json_key}_document.bin/.idx``
    (``format="pretrain"``) or into the token and loss-mask datasets of ``sft`` / ``dpo``.

    Args:
        input_path: JSON-lines file, one document (conversation, preference pair) per line.
        tokenizer_model: sentencepiece ``.model``, HF ``tokenizer.json`` or a directory holding one.
        output_prefix: path prefix of the output; missing directories are created (once the
            first document is ready).
        json_key: pretrain: key of the text in each JSON object.
        workers: tokenising processes (1: in this process; N > 1: a spawned pool, order kept).
        append_eod: pretrain: append the tokenizer's end-of-document id to every document.
        log_interval: print a progress line every this many documents (0: never).
        chunk_size: lines sent to a worker at a time.
        log: stream for progress and summary lines (default: stderr).
        format: ``pretrain``, ``sft`` or ``dpo`` (see the module docstring).
        chat_template: sft / dpo: ``auto``, ``plain`` or a Jinja file (``load_chat_template``).

    Returns:
        PreprocessStats of the run.

    Raises:
        DataError: missing input, unreadable tokenizer or chat template, an output prefix in a
            file or a folder that is not writable, a bad line (``file:line: reason``), or no
            documents at all. Nothing is left at the output paths, and no folder this run created.
    """
    log = sys.stderr if log is None else log
    if format not in FORMATS:
        raise DataError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if not os.path.isfile(input_path):
        raise DataError(f"input file {input_path} does not exist: pass --input FILE.jsonl")
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    if log_interval < 0:
        raise DataError(f"--log-interval must be >= 0, got {log_interval}")
    tok = load_tokenizer(tokenizer_model)
    template = load_chat_template(chat_template, tok) if format != "pretrain" else None
    prefix = output_prefix_for(output_prefix, json_key, format)
    files = _file_prefixes(prefix, format)
    for path in files:
        if os.path.isdir(path + ".bin") or os.path.isdir(path + ".idx"):
            raise DataError(f"{path}.bin or .idx is a folder: pass another --output-prefix")
    created = _missing_dirs(prefix)
    tag = f".tmp-{os.getpid()}"
    temps = [(path + ".bin" + tag, path + ".idx" + tag) for path in files]

    t_import = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Transformer Engine / apex not installed" on import
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    import_s = time.perf_counter() - t_import  # a one-off cost, left out of the rates

    unit = _UNITS[format]
    start = time.perf_counter()
    documents = tokens = supervised = skipped = nbytes = 0
    builders: List = []
    dtype = None
    pool = None
    try:
        lines = _read_lines(input_path)
        if workers == 1:
            _init_worker(tok, json_key, append_eod, format, template)
            results = map(_encode_line, lines)
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(workers, initializer=_init_worker,
                            initargs=(tokenizer_model, json_key, append_eod, format, chat_template))
            results = pool.imap(_encode_line, lines, chunk_size)
        for lineno, status, payload, size in results:
            nbytes += size
            if status == "error":
                raise DataError(f"{input_path}:{lineno}: {payload}")
            if status == "skip":
                skipped += 1
                continue
            arrays, lengths = payload
            if not builders:  # folders appear only now, and go again if the run fails
                os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
                dtype = DType.optimal_dtype(tok.vocab_size)
                builders = [IndexedDatasetBuilder(bin_tmp, dtype=dtype if i == 0 else numpy.uint8)
                            for i, (bin_tmp, _) in enumerate(temps)]
            for builder, array in zip(builders, arrays):
                builder.add_document(array, lengths)
            documents += 1
            tokens += int(arrays[0].size)
            if len(arrays) > 1:
                supervised += int(arrays[1].sum())
            if log_interval and documents % log_interval == 0:
                elapsed = max(time.perf_counter() - start, 1e-9)
                print(f"processed {documents} {unit} ({documents / elapsed:.1f} docs/s, "
                      f"{nbytes / 1e6 / elapsed:.2f} MB/s)", file=log, flush=True)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        if not builders:
            what = (f"documents with text under key {json_key!r}: check the file and --json-key"
                    if format == "pretrain" else f"{unit}: check the file and --format")
            raise DataError(f"{input_path} holds no {what}")
        for builder, (_, idx_tmp) in zip(builders, temps):
            builder.finalize(idx_tmp)
        # The .idx files are renamed last: a reader that finds one also finds the matching .bin.
        for path in files:
            _remove(path + ".idx")
        for path, (bin_tmp, _) in zip(files, temps):
            os.replace(bin_tmp, path + ".bin")
        for path, (_, idx_tmp) in zip(files, temps):
            os.replace(idx_tmp, path + ".idx")
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool.join()
        for builder in builders:
            if not builder.data_file.closed:
                builder.data_file.close()
        for bin_tmp, idx_tmp in temps:
            _remove(bin_tmp)
            _remove(idx_tmp)
        _remove_dirs(created)
        raise
    seconds = time.perf_counter() - start
    stats = PreprocessStats(prefix, documents, tokens, skipped, nbytes, seconds,
                            numpy.dtype(dtype).name, supervised)
    written = " / ".join(f"{path}.bin / .idx" for path in files)
    loss = f", {supervised} with loss" if format != "pretrain" else ""
    print(f"done: {documents} {unit}, {tokens} tokens ({stats.dtype}){loss}, {skipped} skipped, "
          f"{nbytes / 1e6:.2f} MB in {seconds:.2f} s ({stats.docs_per_s:.1f} docs/s, "
          f"{stats.mb_per_s:.2f} MB/s; {import_s:.1f} s importing Megatron-Core before) -> "
          f"{written}", file=log, flush=True)
    return stats
