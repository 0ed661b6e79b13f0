"""What a checkpoint is for, read from its run metadata: the tools refuse to use it in the wrong role.

    refuse_dllm_source(path, meta)         # tools/convert_ar_to_dllm.py: converting a dLLM again
    check_verify_roles(ar_path, dllm_path)  # tools/verify_conversion.py: --ar / --dllm swapped
    check_mergeable(paths)                  # tools/merge_checkpoints.py: AR mixed with dLLM, other labels

A checkpoint without ``dllm_meta.json`` (a Megatron-LM one) is an AR checkpoint; ours record the
objective (``ar``, ``mdlm``, ``bd``), the mask token id and the label alignment. Only metadata is
read here (no torch import), so the tools check roles before loading any weights.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from megatron_dllm.checkpoint.layout import (META, find_checkpoint_dir, read_meta_file, recorded_label_mode,
                                             recorded_mask_token_id, recorded_objective)
from megatron_dllm.convert.errors import ConversionError

AR = "ar"


def _meta_of(path: str) -> Optional[dict]:
    """``dllm_meta.json`` of the checkpoint under ``path`` (iteration or save folder), None without one."""
    directory = path if os.path.isfile(os.path.join(path, META)) else find_checkpoint_dir(path)[0]
    if not os.path.isfile(os.path.join(directory, META)):
        return None
    return read_meta_file(directory)


def diffusion_objective(meta: Optional[dict]) -> Optional[str]:
    """The dLLM objective a checkpoint records ('mdlm', 'bd'), or None for an AR checkpoint."""
    objective = recorded_objective(meta) if meta else None
    return None if objective in (None, AR) else str(objective)


def refuse_dllm_source(path: str, meta: Optional[dict]) -> None:
    """ConversionError when the conversion source ``path`` (metadata ``meta``) is already a dLLM."""
    objective = diffusion_objective(meta)
    if objective is None:
        return
    mask = recorded_mask_token_id(meta)
    raise ConversionError(
        f"{path} is already a dLLM checkpoint (objective {objective}, mask token {mask}): converting "
        f"it again would add a second mask token; continue training it with "
        f"python -m megatron_dllm.pretrain --load {path}, or convert the AR checkpoint it came from")


def check_verify_roles(ar_path: str, dllm_path: str) -> None:
    """ConversionError when ``--ar`` is a dLLM checkpoint or ``--dllm`` is an AR one (roles swapped)."""
    ar_objective = diffusion_objective(_meta_of(ar_path))
    dllm_meta = _meta_of(dllm_path)
    dllm_objective = diffusion_objective(dllm_meta)
    if ar_objective is not None and dllm_objective is None:
        raise ConversionError(
            f"--ar and --dllm are swapped: {ar_path} is a dLLM checkpoint (objective {ar_objective}) and "
            f"{dllm_path} an AR one: pass --ar {dllm_path} --dllm {ar_path}")
    if ar_objective is not None:
        raise ConversionError(
            f"--ar {ar_path} is a dLLM checkpoint (objective {ar_objective}): pass the AR checkpoint "
            f"that tools/convert_ar_to_dllm.py converted")
    if dllm_objective is None:
        what = "a Megatron checkpoint without dllm_meta.json" if dllm_meta is None else "an AR checkpoint"
        raise ConversionError(
            f"--dllm {dllm_path} is {what} (objective ar): pass the output of "
            f"tools/convert_ar_to_dllm.py --load {ar_path}")


def _run_kind(path: str, meta: dict) -> Dict[str, object]:
    """The metadata that must agree between checkpoints averaged into one (missing: the defaults)."""
    try:
        labels = recorded_label_mode(meta)
    except ValueError as exc:
        raise ConversionError(f"{path}: {exc}: the checkpoint is damaged") from None
    return {"objective": recorded_objective(meta) or AR, "mask token id": recorded_mask_token_id(meta),
            **labels}


def check_mergeable(paths: List[str]) -> None:
    """ConversionError unless the checkpoints in ``paths`` are distinct and record the same objective,
    mask token id and label alignment (averaging an AR and a dLLM model gives neither, whatever its label)."""
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise ConversionError(f"{path} is given twice ({seen[real]}): averaging a checkpoint with itself "
                                  "changes nothing; pass each checkpoint once")
        seen[real] = path
    kinds = [(path, _run_kind(path, _meta_of(path) or {})) for path in paths]
    first_path, first = kinds[0]
    for path, kind in kinds[1:]:
        for name, value in kind.items():
            if value != first[name]:
                raise ConversionError(
                    f"{path} has {name} {value} but {first_path} has {first[name]}: merge only "
                    f"checkpoints of one run (same objective, mask token id and label alignment)")
