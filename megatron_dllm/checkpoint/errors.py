"""The error of the checkpoint layer: a one-line message that names the fix; the tools exit 2 on it."""

from __future__ import annotations

from megatron_dllm.config import ConfigError
from megatron_dllm.convert.errors import ConversionError


class CheckpointError(ConfigError, ConversionError):
    """A checkpoint that cannot be read or written as asked (missing, partial, unsafe, foreign).

    It is both a ConfigError (what ``pretrain`` / ``generate`` / ``evaluate`` catch) and a
    ConversionError (what the conversion tools catch), so every entry point prints it as one line.
    """
