"""SIGTERM handling for preemption: finish the step, save, exit 0 (``--exit-signal-handler``)."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from megatron_dllm.platform.distributed import comm_device


class ExitSignalHandler:
    """Records SIGTERM; ``should_exit()`` agrees across ranks (any rank signalled -> all exit)."""

    def __init__(self, sig: int = signal.SIGTERM):
        self.received = False
        self._previous = signal.signal(sig, self._handle)
        self._sig = sig

    def _handle(self, signum, frame):
        self.received = True

    def should_exit(self) -> bool:
        """Collective: every rank must call it at the same point of the loop."""
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32, device=comm_device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        signal.signal(self._sig, self._previous)
