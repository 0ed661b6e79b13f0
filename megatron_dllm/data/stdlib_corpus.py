"""A small real-text corpus from the docstrings of the Python standard library (no downloads).

Every machine that runs this project has CPython's standard library as ``.py`` sources; their module,
class and function docstrings are English prose about code. The corpus is deterministic for a given
Python version: files are read in sorted order, test packages are skipped, and duplicate docstrings
are dropped.

    docs = stdlib_docstrings(max_chars=2_000_000)   # a list of documents (one docstring each)
"""

from __future__ import annotations

import ast
import inspect
import os
import sysconfig
from typing import Iterator, List, Optional

from megatron_dllm.data.errors import DataError

SKIP_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__")


def _source_files(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _docstrings(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield inspect.cleandoc(doc)


def stdlib_docstrings(max_chars: int = 1_000_000, min_chars: int = 40, root: Optional[str] = None,
                      min_total: int = 100_000) -> List[str]:
    """Docstrings of the standard library under ``root`` (default: this Python's), at least
    ``min_chars`` long each, until ``max_chars`` characters in all. Raises DataError when there are
    fewer than ``min_total`` characters (a Python installed without its ``.py`` sources)."""
    root = root or sysconfig.get_paths()["stdlib"]
    seen, docs, total = set(), [], 0
    for path in _source_files(root):
        for doc in _docstrings(path):
            if len(doc) < min_chars or doc in seen:
                continue
            seen.add(doc)
            docs.append(doc)
            total += len(doc)
            if total >= max_chars:
                return docs
    if total < min(max_chars, min_total):
        raise DataError(f"only {total} characters of docstrings under {root}: this Python has no "
                        "standard-library sources; install them (e.g. Debian's libpython3-stdlib) "
                        "or pass your own corpus")
    return docs
