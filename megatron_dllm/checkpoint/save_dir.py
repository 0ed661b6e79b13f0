"""A run's ``--save`` folder: no run destroys another's checkpoints.

* A run writes into a save folder that holds checkpoints only when it resumes from that folder
  (``--load`` = ``--save``, not ``--finetune``); a fresh run there is refused (:func:`check_save_dir`).
* Each checkpoint records its *lineage* (``dllm_meta.json`` key ``lineage``): a fresh run starts a new
  one, a resumed run keeps the loaded one. Saving over an existing ``iter_N`` first renames it aside
  (``iter_N.superseded-K``); once the new one is in place the old one is deleted only when it is of
  the same lineage. One of another lineage is kept.
* Pruning (``--ckpt-keep-last``) removes only older checkpoints of the run's own lineage, and never the
  tracker's iteration nor the newest finite checkpoint (``finite: false`` in the metadata marks a
  non-finite one; a missing key means finite).
* A ``kill -9`` during a save leaves ``iter_N.tmp``; :func:`clean_stale` removes such folders at start.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import List, Optional, Tuple

from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.layout import (
    TMP_DIR,
    TRACKER,
    checkpoint_path,
    is_finite,
    iterations,
    read_meta,
    read_tracker,
)

LINEAGE = "lineage"


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def resumes_from_save(save: str, load: Optional[str], finetune: bool) -> bool:
    """True when the run continues the checkpoints of ``save`` (``--load`` is the same folder).

    Also without a tracker (a run killed before its first tracker write): it starts from scratch
    then, and the folders it finds are moved aside rather than replaced (:func:`make_room`).
    """
    return bool(load) and not finetune and os.path.isdir(load) and \
        os.path.realpath(load) == os.path.realpath(save)


def check_save_dir(save: Optional[str], load: Optional[str], finetune: bool = False) -> None:
    """Refuse a ``--save`` that is a file, or that holds checkpoints this run does not continue."""
    if not save:
        return
    if os.path.lexists(save) and not os.path.isdir(save):
        raise CheckpointError(f"--save {save} is a file, not a folder: choose a folder path for the checkpoints")
    ancestor = _existing_ancestor(save)
    if not os.path.isdir(ancestor):
        raise CheckpointError(f"--save {save}: {ancestor} is a file, not a folder: choose another --save path")
    found = iterations(save)
    if not found and read_tracker(save) is None:
        return
    if resumes_from_save(save, load, finetune):
        return
    shown = ", ".join(str(i) for i in found[-3:]) or "a tracker file"
    if finetune and load and os.path.realpath(load) == os.path.realpath(save):
        raise CheckpointError(f"--save {save} holds checkpoints (iterations {shown}) and --finetune restarts at "
                              "iteration 0: choose a new --save folder")
    raise CheckpointError(f"--save {save} already holds checkpoints (iterations {shown}) that this run does not "
                          f"resume: resume them with --load {save}, or choose a new --save folder")


def clean_stale(save: str) -> List[str]:
    """Remove ``iter_N.tmp`` folders and a tracker ``.tmp`` left by a killed save; returns their names."""
    if not os.path.isdir(save):
        return []
    removed = []
    for name in sorted(os.listdir(save)):
        path = os.path.join(save, name)
        if TMP_DIR.match(name) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        elif name == TRACKER + ".tmp" and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


def new_lineage() -> str:
    """A fresh lineage id (a run that starts from scratch, or from another folder's checkpoint)."""
    return uuid.uuid4().hex


def _lineage_of(root: str, iteration: int) -> Optional[str]:
    try:
        return read_meta(root, iteration).get(LINEAGE)
    except CheckpointError:
        return None


def make_room(root: str, iteration: int, lineage: str) -> Optional[Tuple[str, bool]]:
    """Free ``iter_N`` for a new save by renaming an existing one aside (``iter_N.superseded-K``).

    Returns (the folder it was moved to, whether it may be deleted once the new checkpoint is in
    place: only one of ``lineage``), or None when ``iter_N`` did not exist. Writing rank only.
    """
    final = checkpoint_path(root, iteration)
    if not os.path.lexists(final):
        return None
    ours = _lineage_of(root, iteration) == lineage
    k = 0
    while os.path.lexists(f"{final}.superseded-{k}"):
        k += 1
    aside = f"{final}.superseded-{k}"
    os.rename(final, aside)
    return aside, ours


def prune(root: str, keep_last: int, lineage: str) -> List[int]:
    """Delete all but the newest ``keep_last`` checkpoints of ``lineage``; returns those deleted.

    Never deletes the tracker's iteration, the newest finite checkpoint, or another lineage's.
    """
    if keep_last <= 0:
        return []
    ours = []
    for it in iterations(root):
        try:
            meta = read_meta(root, it)
        except CheckpointError:
            continue  # incomplete or foreign: not ours to delete
        if meta.get(LINEAGE) == lineage:
            ours.append((it, is_finite(meta)))
    tracker = read_tracker(root)
    protected = {int(tracker)} if tracker and tracker.isdigit() else set()
    finite = [it for it, ok in ours if ok]
    if finite:
        protected.add(finite[-1])
    deleted = []
    for it, _ in ours[:-keep_last]:
        if it in protected:
            continue
        shutil.rmtree(checkpoint_path(root, it), ignore_errors=True)
        deleted.append(it)
    return deleted
