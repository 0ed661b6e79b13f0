"""Device selection: CUDA when present, else CPU with the CPU backend applied."""

from __future__ import annotations

import torch


def resolve_device(requested: str | None = None) -> str:
    """'cuda' or 'cpu'. ``None``/'auto' picks CUDA when available; asking for CUDA without one fails."""
    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}: use cpu, cuda or auto")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
    return requested


def setup_device(requested: str | None = None) -> str:
    """Resolve the device and prepare the process for it; returns 'cpu' or 'cuda'."""
    device = resolve_device(requested)
    if device == "cpu":
        from megatron_dllm.platform.cpu import apply_cpu_backend

        apply_cpu_backend()
    return device
