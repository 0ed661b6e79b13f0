"""Where a checkpoint lives on disk, and what its run metadata says (no torch import: tools check paths first).

A ``--save`` folder (Megatron-LM compatible)::

    SAVE/latest_checkpointed_iteration.txt      the iteration of the newest complete checkpoint (or ``release``)
    SAVE/iter_0000020/                          one checkpoint
    SAVE/iter_0000020.tmp/                      a save in progress (renamed when complete; stale after a crash)

An iteration folder is either torch_dist (``.metadata``, ``*.distcp``, ``metadata.json``, ``common.pt``;
ours add ``dllm_meta.json`` and ``rng/rank_XXXXX.pt``) or a legacy Megatron-LM one
(``mp_rank_XX[_YYY][_ZZZ]/model_optim_rng.pt``).

``dllm_meta.json`` holds the iteration, consumed samples / tokens, the scheduler state, the run config
and the parallel layout, plus the ``extra`` keys of the writer at top level (``mask_token_id``,
``eod_id``, ``objective``, ``label_shift``, ...). :func:`recorded_mask_token_id` is the one place
that reads the mask token back.
"""

from __future__ import annotations

import json
import os
import re
from typing import List, Optional, Tuple

from megatron_dllm.checkpoint.errors import CheckpointError

TRACKER = "latest_checkpointed_iteration.txt"
META = "dllm_meta.json"
DLLM_META = META
ITER_DIR = re.compile(r"^iter_(\d{7})$")
TMP_DIR = re.compile(r"^iter_(\d{7})\.tmp$")
RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")


def checkpoint_path(root: str, iteration: int) -> str:
    """The folder of ``iteration`` under the save folder ``root``."""
    return os.path.join(root, f"iter_{iteration:07d}")


def iterations(root: str) -> List[int]:
    """Sorted iterations that have a folder (complete or not) under ``root``; [] when none."""
    if not os.path.isdir(root):
        return []
    return sorted(int(m.group(1)) for m in map(ITER_DIR.match, os.listdir(root)) if m)


def read_tracker(root: str) -> Optional[str]:
    """The tracker's text (an iteration number or ``release``), or None without a tracker file."""
    tracker = os.path.join(root, TRACKER)
    if not os.path.isfile(tracker):
        return None
    with open(tracker) as handle:
        text = handle.read().strip()
    if text != "release" and not text.isdigit():
        raise CheckpointError(f"{tracker} is corrupt ({text!r}): it should hold an iteration number; "
                              "write the number of an existing iter_* folder into it")
    return text


def latest_iteration(root: str) -> Optional[int]:
    """Iteration named by the tracker of a megatron_dllm save folder, or None when it holds none."""
    text = read_tracker(root)
    if text is None:
        return None
    if text == "release":
        raise CheckpointError(f"{os.path.join(root, TRACKER)} names a 'release' checkpoint: convert it "
                              "with tools/convert_ar_to_dllm.py first")
    iteration = int(text)
    if not os.path.isfile(os.path.join(checkpoint_path(root, iteration), META)):
        raise CheckpointError(f"{os.path.join(root, TRACKER)} names iteration {iteration} but "
                              f"{checkpoint_path(root, iteration)} is missing or incomplete: point the "
                              "tracker at an existing iter_* folder")
    return iteration


def read_meta_file(directory: str) -> dict:
    """``dllm_meta.json`` of an iteration folder (a CheckpointError when missing or corrupt)."""
    path = os.path.join(directory, META)
    try:
        with open(path) as handle:
            meta = json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {META}: not a megatron_dllm checkpoint") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc.__class__.__name__}): the checkpoint is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is corrupt (not a JSON object): the checkpoint is damaged")
    return meta


def read_meta(root: str, iteration: int) -> dict:
    """``dllm_meta.json`` of ``iteration`` under the save folder ``root``."""
    return read_meta_file(checkpoint_path(root, iteration))


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- run metadata
def recorded_mask_token_id(meta: dict) -> Optional[int]:
    """The [MASK] id a checkpoint records (written at top level; older converted ones under run.diffusion)."""
    value = meta.get("mask_token_id")
    if value is None:
        value = ((meta.get("run") or {}).get("diffusion") or {}).get("mask_token_id")
    return None if value is None else int(value)


def recorded_objective(meta: dict) -> Optional[str]:
    """The objective a checkpoint was trained or converted for ('ar', 'mdlm', 'bd'), if recorded."""
    value = meta.get("objective")
    if value is None:
        value = ((meta.get("run") or {}).get("diffusion") or {}).get("objective")
    return value


def recorded_label_mode(meta: dict) -> dict:
    """The label alignment a checkpoint records: ``label_shift`` and ``token_shift`` (False when
    absent) and ``clean_stream`` (``"causal"`` or ``"block_causal"``, the default when absent)."""
    clean = meta.get("clean_stream") or "block_causal"
    if clean not in ("causal", "block_causal"):
        raise ValueError(f"checkpoint metadata: clean_stream {clean!r} is neither 'causal' nor 'block_causal'")
    return {"label_shift": bool(meta.get("label_shift", False)),
            "token_shift": bool(meta.get("token_shift", False)), "clean_stream": clean}


def is_finite(meta: dict) -> bool:
    """False only when the writer recorded non-finite weights (``finite: false``); missing means finite."""
    return meta.get("finite", True) is not False


# --------------------------------------------------------------------------- finding a checkpoint
def is_torch_dist_dir(path: str) -> bool:
    """True when ``path`` holds a torch_dist (DCP) checkpoint."""
    return os.path.isfile(os.path.join(path, ".metadata"))


def rank_dirs(path: str) -> List[str]:
    """Sorted legacy ``mp_rank_*`` directory names in ``path``."""
    return sorted(name for name in os.listdir(path)
                  if RANK_DIR.match(name) and os.path.isdir(os.path.join(path, name)))


def find_checkpoint_dir(path: str) -> Tuple[str, Optional[int]]:
    """(iteration directory, iteration) of the checkpoint under ``path``; CheckpointError if none.

    ``path`` is a save folder (its tracker names the iteration) or one iteration folder.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path} is not a directory")
    text = read_tracker(path)
    if text is not None:
        if text == "release":
            directory, iteration = os.path.join(path, "release"), None
        else:
            iteration = int(text)
            directory = checkpoint_path(path, iteration)
        if not os.path.isdir(directory):
            raise CheckpointError(f"{os.path.join(path, TRACKER)} names {os.path.basename(directory)} but "
                                  f"{directory} is missing: the checkpoint is partial")
        return directory, iteration
    if is_torch_dist_dir(path) or rank_dirs(path):
        match = re.search(r"iter_(\d+)$", os.path.normpath(path))
        return path, int(match.group(1)) if match else None
    if any(name.startswith("iter_") for name in os.listdir(path)):
        raise CheckpointError(f"{path} has iter_* directories but no {TRACKER}: pass one iteration directory")
    raise CheckpointError(f"no checkpoint found in {path} (no {TRACKER}, no torch_dist .metadata, "
                          "no mp_rank_* directories)")


def detect_format(directory: str) -> str:
    """'torch_dist' or 'torch' for an iteration directory; CheckpointError for anything else."""
    if is_torch_dist_dir(directory):
        return "torch_dist"
    if rank_dirs(directory):
        return "torch"
    if os.path.isfile(os.path.join(directory, "metadata.json")) or any(
            name.endswith(".distcp") for name in os.listdir(directory)):
        raise CheckpointError(f"{directory} is a torch_dist checkpoint without its .metadata file: it is partial")
    raise CheckpointError(
        f"{directory} has an unknown layout: expected a torch_dist checkpoint (.metadata, *.distcp) or "
        "legacy rank directories (mp_rank_XX[_YYY][_ZZZ]/model_optim_rng.pt)")


def locate(path: str) -> Tuple[str, Optional[int], str]:
    """(iteration directory, iteration, format) of the checkpoint under ``path``."""
    directory, iteration = find_checkpoint_dir(path)
    return directory, iteration, detect_format(directory)


def dllm_checkpoint_dir(path: str) -> str:
    """The iteration folder of a megatron_dllm checkpoint: ``path`` itself, or its save folder's latest."""
    directory = path if os.path.isfile(os.path.join(path, META)) else find_checkpoint_dir(path)[0]
    if not os.path.isfile(os.path.join(directory, META)):
        raise CheckpointError(f"{directory} has no {META}: not a megatron_dllm checkpoint")
    if not is_torch_dist_dir(directory):
        raise CheckpointError(f"{directory} is not a torch_dist checkpoint (no .metadata): it is partial")
    return directory
