"""Finding a checkpoint on disk and telling its format (no torch import: the tools check paths first).

A Megatron ``--save`` directory holds ``latest_checkpointed_iteration.txt`` (an iteration number or
``release``) and ``iter_XXXXXXX`` / ``release`` directories. An iteration directory is either a
torch_dist checkpoint (``.metadata`` + ``*.distcp``) or a legacy one (``mp_rank_XX[_YYY][_ZZZ]``
directories, each with ``model_optim_rng.pt``).
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from megatron_dllm.convert.errors import ConversionError

TRACKER = "latest_checkpointed_iteration.txt"
DLLM_META = "dllm_meta.json"
RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")


def is_torch_dist_dir(path: str) -> bool:
    """True when ``path`` holds a torch_dist (DCP) checkpoint."""
    return os.path.isfile(os.path.join(path, ".metadata"))


def rank_dirs(path: str) -> List[str]:
    """Sorted legacy ``mp_rank_*`` directory names in ``path``."""
    return sorted(name for name in os.listdir(path)
                  if RANK_DIR.match(name) and os.path.isdir(os.path.join(path, name)))


def find_checkpoint_dir(path: str) -> Tuple[str, Optional[int]]:
    """(iteration directory, iteration) of the checkpoint under ``path``; ConversionError if none."""
    if not os.path.exists(path):
        raise ConversionError(f"checkpoint path {path} does not exist")
    if not os.path.isdir(path):
        raise ConversionError(f"checkpoint path {path} is not a directory")
    tracker = os.path.join(path, TRACKER)
    if os.path.isfile(tracker):
        text = open(tracker).read().strip()
        if text == "release":
            directory, iteration = os.path.join(path, "release"), None
        elif text.isdigit():
            iteration = int(text)
            directory = os.path.join(path, f"iter_{iteration:07d}")
        else:
            raise ConversionError(f"{tracker} is corrupt ({text!r}): it should hold an iteration number")
        if not os.path.isdir(directory):
            raise ConversionError(f"{tracker} names {os.path.basename(directory)} but {directory} is missing: "
                                  "the checkpoint is partial")
        return directory, iteration
    if is_torch_dist_dir(path) or rank_dirs(path):
        match = re.search(r"iter_(\d+)$", os.path.normpath(path))
        return path, int(match.group(1)) if match else None
    if any(name.startswith("iter_") for name in os.listdir(path)):
        raise ConversionError(f"{path} has iter_* directories but no {TRACKER}: pass one iteration directory")
    raise ConversionError(f"no checkpoint found in {path} (no {TRACKER}, no torch_dist .metadata, "
                          "no mp_rank_* directories)")


def detect_format(directory: str) -> str:
    """'torch_dist' or 'torch' for an iteration directory; ConversionError for anything else."""
    if is_torch_dist_dir(directory):
        return "torch_dist"
    if rank_dirs(directory):
        return "torch"
    if os.path.isfile(os.path.join(directory, "metadata.json")) or any(
            name.endswith(".distcp") for name in os.listdir(directory)):
        raise ConversionError(f"{directory} is a torch_dist checkpoint without its .metadata file: it is partial")
    raise ConversionError(
        f"{directory} has an unknown layout: expected a torch_dist checkpoint (.metadata, *.distcp) or "
        "legacy rank directories (mp_rank_XX[_YYY][_ZZZ]/model_optim_rng.pt)")


def locate(path: str) -> Tuple[str, Optional[int], str]:
    """(iteration directory, iteration, format) of the checkpoint under ``path``."""
    directory, iteration = find_checkpoint_dir(path)
    return directory, iteration, detect_format(directory)
