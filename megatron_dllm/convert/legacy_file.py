"""One Megatron-LM ``model_optim_rng.pt``, its tensors memory-mapped and read on demand.

The file is loaded with ``torch.load(weights_only=True, mmap=True)`` plus the allowances for what
Megatron-LM pickles (``checkpoint.safe_pickle.safe_torch_load(megatron_lm=True)``): no code from it
runs and no tensor byte is read until a caller copies it. The pages a mapping has read stay resident
until it is closed, so a :class:`LegacyFile` drops its mapping after ``budget`` bytes have been copied
out of it and maps the file again on next use: resident memory stays bounded whatever the file size.

:class:`LegacyTensor` is a handle (file, state-dict path, shape, dtype, optionally a contiguous block
of the stored tensor) with ``load(out=None, rows=None)`` returning a copy.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from megatron_dllm.checkpoint.safe_pickle import safe_torch_load

DEFAULT_BUDGET = 512 << 20


class LegacyFile:
    """A mapped ``torch.save`` file whose mapping is renewed every ``budget`` bytes read."""

    def __init__(self, path: str, budget: int = DEFAULT_BUDGET):
        self.path, self.budget = path, budget
        self._state = None
        self._read = 0
        self.maps = 0  # how many times the file was mapped (for tests)

    def state(self):
        """The unpickled file: containers and values as saved, tensors mapped (not read)."""
        if self._state is None:
            self._state = safe_torch_load(self.path, self.path, mmap=True, megatron_lm=True)
            self.maps += 1
        return self._state

    def lookup(self, path: Tuple[str, ...]) -> torch.Tensor:
        value = self.state()
        for key in path:
            value = value[key]
        return value

    def account(self, nbytes: int) -> None:
        self._read += nbytes
        if self._read >= self.budget:
            self._state, self._read = None, 0  # unmaps once the last copy is gone

    def tensors(self, prefix: Tuple[str, ...]):
        """(key, LegacyTensor) of every tensor of the dict at ``prefix`` (e.g. ``("model",)``)."""
        for key, value in self.lookup(prefix).items():
            if isinstance(value, torch.Tensor):
                yield key, LegacyTensor(self, prefix + (key,), tuple(value.shape), value.dtype)


class LegacyTensor:
    """A tensor of a :class:`LegacyFile` (or a contiguous block of one), copied out on ``load``."""

    __slots__ = ("file", "path", "shape", "dtype", "block")

    def __init__(self, file: LegacyFile, path, shape, dtype, block: Optional[int] = None):
        self.file, self.path, self.shape, self.dtype, self.block = file, path, tuple(shape), dtype, block

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def sub(self, shape, element_offset: int) -> "LegacyTensor":
        """The contiguous block of ``shape`` starting ``element_offset`` elements into this tensor."""
        base = self.block or 0
        return LegacyTensor(self.file, self.path, shape, self.dtype, base + element_offset)

    def load(self, out: Optional[torch.Tensor] = None, rows: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """A copy of the tensor (or of rows ``[a, b)`` of dim 0); fills ``out`` when given."""
        data = self.file.lookup(self.path)
        if self.block is not None:
            data = data.reshape(-1)[self.block:self.block + self.numel].view(self.shape)
        if rows is not None:
            if not self.shape or not 0 <= rows[0] <= rows[1] <= self.shape[0]:
                raise ValueError(f"rows {rows} outside dim 0 of shape {self.shape}")
            data = data[rows[0]:rows[1]]
        result = out.copy_(data) if out is not None else data.clone(memory_format=torch.contiguous_format)
        del data
        self.file.account(result.numel() * result.element_size())
        return result

    def __repr__(self):
        return f"LegacyTensor({self.dtype}, {list(self.shape)})"
