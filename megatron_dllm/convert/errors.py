"""The one error type of the conversion tools: its message is a single line that names the fix."""

from __future__ import annotations


class ConversionError(ValueError):
    """Bad or unsupported input to a converter; the tools print ``error: <message>`` and exit 2."""
