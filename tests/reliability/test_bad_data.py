"""Bad data on disk: a token id outside the tokenizer's vocabulary, an inconsistent ``.idx``, and a
preprocessing run that fails; each is a one-line error naming the file and the fix, nothing written."""

import io
import os
import shutil
import subprocess
import sys

import numpy
import pytest

from megatron_dllm.data.config import DataConfig
from megatron_dllm.data.datasets import validate_data_config
from megatron_dllm.data.errors import DataError
from megatron_dllm.data.index_file import inspect_indexed_dataset
from megatron_dllm.data.preprocess import preprocess_jsonl
from megatron_dllm.data.synthetic import synthetic_lines, train_sentencepiece, write_jsonl
from tests.e2e.cli import ROOT, TINY, env, pretrain

VOCAB = 100
HEADER = 34


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer of 100 ids, its JSON-lines corpus and the preprocessed dataset (uint16 tokens)."""
    root = tmp_path_factory.mktemp("bad_data")
    texts = synthetic_lines(200, seed=11)
    model = train_sentencepiece(texts, str(root / "tok"), vocab_size=VOCAB)
    write_jsonl(str(root / "c.jsonl"), texts)
    stats = preprocess_jsonl(str(root / "c.jsonl"), model, str(root / "c"), log=io.StringIO())
    assert stats.dtype == "uint16"
    return {"root": root, "model": model, "prefix": stats.output_prefix, "texts": texts}


@pytest.fixture
def copy(corpus, tmp_path):
    prefix = str(tmp_path / "x_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(corpus["prefix"] + ext, prefix + ext)
    return prefix


def _poke(path, dtype, index, value, base=0):
    """Overwrite element ``index`` of the ``dtype`` array that starts at byte ``base`` of ``path``."""
    itemsize = numpy.dtype(dtype).itemsize
    data = numpy.memmap(path, dtype=dtype, mode="r+", offset=base + index * itemsize, shape=(1,))
    data[0] = value
    data.flush()
    del data


def _validate(prefix, vocab=VOCAB):
    return validate_data_config(DataConfig(data_path=[prefix], split="1,0,0"), (10, 0, 0),
                                token_vocab_size=vocab)


def test_token_id_outside_the_vocabulary_is_named(copy):
    _validate(copy)  # the clean copy passes
    _poke(copy + ".bin", numpy.uint16, 1234, 300)
    with pytest.raises(DataError) as err:
        _validate(copy)
    assert str(err.value) == (
        f"data file {copy}.bin holds token id 300 (token 1234) but the tokenizer has {VOCAB} ids: the "
        f"data was written with another tokenizer; pass the --tokenizer-model it was made with, or "
        f"rewrite the data with tools/preprocess_data.py --tokenizer-model <the one you train with>")
    _validate(copy, vocab=301)  # the same file under a tokenizer that has id 300


@pytest.mark.slow
def test_pretrain_refuses_data_of_another_tokenizer_before_writing(copy, corpus, tmp_path):
    """The reproduction of issue 13: ids >= vocab in a .bin (an IndexError deep in training before)."""
    _poke(copy + ".bin", numpy.uint16, 7, 5000)
    save = tmp_path / "save"
    proc = pretrain(["--config", TINY, "--device", "cpu", "--data-path", copy, "--tokenizer-model",
                     corpus["model"], "--exit-interval", "2", "--eval-interval", "0", "--save", str(save)],
                    check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: data file {copy}.bin holds token id 5000 (token 7) but the tokenizer has {VOCAB} ids: "
        f"the data was written with another tokenizer; pass the --tokenizer-model it was made with, or "
        f"rewrite the data with tools/preprocess_data.py --tokenizer-model <the one you train with>"]
    assert not save.exists()


def _idx_arrays(prefix):
    n_seq = int(numpy.fromfile(prefix + ".idx", dtype="<u8", count=1, offset=18)[0])
    return n_seq, HEADER, HEADER + 4 * n_seq, HEADER + 12 * n_seq  # lengths, pointers, bounds


@pytest.mark.parametrize("field,index,value,reason", [
    ("lengths", 3, 1, "sequence 3 of length 1 starts at byte {p3} but sequence 4 at byte {p4}: the "
                      "lengths and pointers disagree"),
    ("lengths", 0, -7, "sequence 0 has length -7"),
    ("pointers", 0, 2, "the first sequence starts at byte 2, not 0"),
    ("pointers", 5, 0, "sequence 4 of length {l4} starts at byte {p4} but sequence 5 at byte 0: the "
                       "lengths and pointers disagree"),
    ("bounds", 0, 1, "first document bound 1 != 0"),
    ("bounds", 9, 2, "document bounds decrease at entry 9"),
])
def test_corrupt_index_arrays_are_named(copy, field, index, value, reason):
    """A changed length, pointer or document bound: Megatron would read wrong windows silently."""
    n_seq, lengths_at, pointers_at, bounds_at = _idx_arrays(copy)
    lengths = numpy.fromfile(copy + ".idx", dtype="<i4", count=n_seq, offset=lengths_at)
    pointers = numpy.fromfile(copy + ".idx", dtype="<i8", count=n_seq, offset=pointers_at)
    inspect_indexed_dataset(copy)
    dtype, offset = {"lengths": ("<i4", lengths_at), "pointers": ("<i8", pointers_at),
                     "bounds": ("<i8", bounds_at)}[field]
    _poke(copy + ".idx", dtype, index, value, base=offset)
    expected = reason.format(p3=pointers[3], p4=pointers[4], l4=lengths[4])
    with pytest.raises(DataError) as err:
        _validate(copy)
    assert str(err.value) == (f"index file {copy}.idx is corrupt ({expected}): rewrite "
                              f"{copy}.bin/.idx with tools/preprocess_data.py")


def _preprocess(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), *args],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)


def test_failed_preprocessing_leaves_no_folder(corpus, tmp_path):
    """A bad line after documents were written: no .bin/.idx, and the folders it made are gone."""
    bad = tmp_path / "bad.jsonl"
    write_jsonl(str(bad), corpus["texts"][:20])
    with open(bad, "a") as handle:
        handle.write('{"text": oops}\n')
    proc = _preprocess("--input", str(bad), "--tokenizer-model", corpus["model"],
                       "--output-prefix", str(tmp_path / "new" / "deeper" / "x"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {bad}:21: not valid JSON (Expecting value at column 10)"]
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_output_prefix_under_a_file_is_refused(corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _preprocess("--input", os.path.join(corpus["root"], "c.jsonl"), "--tokenizer-model",
                       corpus["model"], "--output-prefix", str(blocker / "sub" / "x"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: --output-prefix {blocker / 'sub' / 'x'}_text_document: {blocker} is a file, not a folder: "
        f"pass a prefix in a folder"]
    assert sorted(os.listdir(tmp_path)) == ["file"]
