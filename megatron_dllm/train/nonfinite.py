"""The non-finite guard: a NaN / Inf loss, gradient norm or weight stops the run (or skips the step).

Every iteration the loop checks the reduced loss (before the update) and the global gradient norm
(``engine.optimizer_step`` applies no update when it is not finite); both numbers are on the host
already for logging, so the check adds no device sync. A bad iteration stops the run with one line
naming it and exit code ``EXIT_NONFINITE`` (3), unless ``--skip-nonfinite-iters N`` allows skipping it.
Before a checkpoint is written, every weight is checked (one reduction per save), so no checkpoint
holds NaN / Inf and each records ``finite: true`` in its metadata.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist

EXIT_NONFINITE = 3


class NonFiniteError(RuntimeError):
    """NaN / Inf in a loss, gradient norm or weight; the message says where and what to do."""


def _finite(value) -> bool:
    return value is None or math.isfinite(float(value))


def step_problem(loss_sum: float, grad_norm: Optional[float]) -> Optional[str]:
    """'loss is nan' / 'grad norm is inf' for a bad step, None when both are finite (None = not computed)."""
    if not _finite(loss_sum):
        return f"loss is {float(loss_sum)}"
    if not _finite(grad_norm):
        return f"grad norm is {float(grad_norm)}"
    return None


def stop_message(iteration: int, problem: str, allowed: int, last_checkpoint: Optional[str]) -> str:
    """The one line a diverged run ends with (no 'error:' prefix)."""
    kept = f"the last checkpoint ({last_checkpoint}) is kept" if last_checkpoint else "nothing was saved"
    skipped = f" after skipping {allowed} bad iterations" if allowed else ""
    return (f"iteration {iteration}: {problem}{skipped}; training stopped without saving it and {kept}: "
            f"lower --lr, or pass --skip-nonfinite-iters N to skip up to N such "
            f"iterations")


def _local_tensors(model) -> Iterable[torch.Tensor]:
    for chunk in model:
        module = getattr(chunk, "module", chunk)
        yield from module.parameters()
        yield from (b for b in module.buffers() if b.is_floating_point())


def weights_finite(model) -> bool:
    """True when every parameter and floating buffer of every rank is finite (collective, one sync)."""
    flags = [torch.isfinite(t).all() for t in _local_tensors(model)]
    local = torch.stack(flags).all() if flags else torch.tensor(True)
    flag = local.to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        from megatron_dllm.platform.distributed import comm_device

        flag = flag.to(comm_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def nonfinite_names(named: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """Names of the tensors that hold a NaN or Inf (floating tensors only)."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]
