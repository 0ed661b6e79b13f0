"""The standard-library docstring corpus: what it reads, skips and refuses."""

import pytest

from megatron_dllm.data.errors import DataError
from megatron_dllm.data.stdlib_corpus import stdlib_docstrings


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_reads_module_class_and_function_docstrings_in_sorted_order(tmp_path):
    long = "x" * 50
    _write(tmp_path / "b.py", f'"""Module b {long}"""\nclass C:\n    """Class C {long}"""\n'
                              f'    def f(self):\n        """Method f {long}"""\n')
    _write(tmp_path / "a.py", f'"""Module a {long}"""\n')
    _write(tmp_path / "test" / "t.py", f'"""Skipped test {long}"""\n')
    _write(tmp_path / "c.py", f'"""Module a {long}"""\n')           # duplicate: dropped
    _write(tmp_path / "d.py", '"""short"""\n')                       # under min_chars
    _write(tmp_path / "e.py", "def broken(:\n")                      # syntax error: skipped
    docs = stdlib_docstrings(max_chars=10_000, root=str(tmp_path), min_chars=40, min_total=0)
    assert docs == [f"Module a {long}", f"Module b {long}", f"Class C {long}", f"Method f {long}"]
    assert stdlib_docstrings(max_chars=100, root=str(tmp_path), min_total=0) == docs[:2]


def test_refuses_a_python_without_sources(tmp_path):
    _write(tmp_path / "a.py", '"""' + "y" * 60 + '"""\n')
    with pytest.raises(DataError, match="no standard-library sources"):
        stdlib_docstrings(max_chars=1_000_000, root=str(tmp_path))


def test_this_python_gives_a_corpus_of_the_requested_size():
    docs = stdlib_docstrings(max_chars=200_000)
    total = sum(map(len, docs))
    assert 200_000 <= total < 200_000 + max(map(len, docs)) + 1
    assert len(set(docs)) == len(docs)
    assert docs == stdlib_docstrings(max_chars=200_000)  # deterministic
