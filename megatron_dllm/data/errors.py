"""The one error type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """Data, tokenizer or data-configuration problem; the message names the file and the fix."""
