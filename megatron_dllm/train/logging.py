"""Training logs: a Megatron-style console line, TensorBoard scalars and metrics.jsonl.

One ``MetricsLogger`` per run, active on global rank 0 only (the numbers it gets are already reduced
over data-parallel ranks and broadcast from the last pipeline stage).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, Optional

_CONSOLE_KEYS = (
    ("consumed_tokens", "consumed tokens", "{:d}"),
    ("phase", "phase", "{}"),
    ("block_size", "block size", "{}"),
    ("lr", "lr", "{:.3e}"),
    ("loss", "loss", "{:.6e}"),
    ("masked_acc", "masked acc", "{:.4f}"),
    ("reward_margin", "reward margin", "{:.4e}"),        # DPO (objectives/dpo.py)
    ("preference_accuracy", "preference acc", "{:.4f}"),
    ("kl", "kl", "{:.4e}"),
    ("grad_norm", "grad norm", "{:.4f}"),
    ("tokens_per_s", "tokens/s", "{:.1f}"),
    ("ms_per_iter", "ms/iter", "{:.1f}"),
)


def console_line(iteration: int, train_iters: Optional[int], metrics: Dict) -> str:
    """' iteration       20/      60 | consumed tokens: ... | loss: ... |' (Megatron-LM's format)."""
    total = f"{train_iters:8d}" if train_iters else "       ?"
    parts = [f" iteration {iteration:8d}/{total}"]
    for key, label, fmt in _CONSOLE_KEYS:
        value = metrics.get(key)
        if value is None:
            continue
        try:
            parts.append(f"{label}: {fmt.format(value)}")
        except (ValueError, TypeError):
            parts.append(f"{label}: {value}")
    return " | ".join(parts) + " |"


class MetricsLogger:
    """Writes console lines, TensorBoard scalars (train/..., valid/...) and JSON lines."""

    def __init__(self, *, enabled: bool, tensorboard_dir: Optional[str], metrics_path: Optional[str],
                 train_iters: Optional[int]):
        self.enabled = enabled
        self.train_iters = train_iters
        self.writer = None
        self.metrics_file = None
        if not enabled:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(tensorboard_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir=tensorboard_dir, max_queue=100)
        if metrics_path:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
            self.metrics_file = open(metrics_path, "a", buffering=1)

    def log_train(self, iteration: int, metrics: Dict, scalars: Dict[str, float]) -> None:
        """Console line + ``train/<name>`` scalars + one JSON object with ``metrics``."""
        if not self.enabled:
            return
        print(console_line(iteration, self.train_iters, metrics), flush=True)
        self._scalars("train", iteration, scalars)
        self._json({"kind": "train", "iteration": iteration, **metrics})

    def log_valid(self, iteration: int, metrics: Dict) -> None:
        if not self.enabled:
            return
        text = " | ".join(f"{k}: {v:.6e}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items())
        print(f" validation at iteration {iteration:8d} | {text} |", flush=True)
        self._scalars("valid", iteration, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self._json({"kind": "valid", "iteration": iteration, **metrics})

    def info(self, text: str) -> None:
        if self.enabled:
            print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}", file=sys.stdout, flush=True)

    def _scalars(self, prefix: str, iteration: int, scalars: Dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"{prefix}/{name}", float(value), iteration)

    def _json(self, record: Dict) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(record, default=float) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
