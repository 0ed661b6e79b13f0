"""Output directories of the tools: never overwrite, appear atomically (temporary directory + rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterable

from megatron_dllm.checkpoint.errors import CheckpointError


def check_output(path: str, inputs: Iterable[str] = ()) -> None:
    """Refuse an existing non-empty ``path``, or one inside (or containing) an input directory."""
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise CheckpointError(f"output {path} already exists: choose a new directory (refusing to overwrite)")
    out = os.path.realpath(path)
    for source in inputs:
        src = os.path.realpath(source)
        if out == src or out.startswith(src + os.sep) or src.startswith(out + os.sep):
            raise CheckpointError(f"output {path} overlaps the input {source}: write it somewhere else")
    parent = os.path.dirname(out) or "."
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise CheckpointError(f"the parent of {path} is not a directory")


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a temporary sibling of ``path`` to fill; rename it to ``path`` on success, delete on error."""
    tmp = f"{path.rstrip(os.sep)}.tmp-{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(tmp)), exist_ok=True)
    _remove_stale_siblings(path)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        os.rmdir(path)  # check_output allowed it only when empty
    os.rename(tmp, path)
    try:
        fd = os.open(os.path.dirname(os.path.realpath(path)) or ".", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def _remove_stale_siblings(path: str) -> None:
    """Delete ``PATH.tmp-PID`` folders of writers that no longer run (a killed conversion or export)."""
    base = path.rstrip(os.sep)
    parent = os.path.dirname(os.path.abspath(base))
    prefix = os.path.basename(base) + ".tmp-"
    for name in os.listdir(parent):
        if not name.startswith(prefix) or not name[len(prefix):].isdigit():
            continue
        try:
            os.kill(int(name[len(prefix):]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except OSError:
            pass  # alive, owned by another user: leave it


def write_text(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def early_path_error(save: str, load: str):
    """The one-line error for a bad --load / --save pair, or None (checked before torch is imported)."""
    from megatron_dllm.checkpoint.layout import locate

    try:
        check_output(save, inputs=[load])
        locate(load)
    except (CheckpointError, OSError) as exc:
        return f"error: {exc}"
    return None
