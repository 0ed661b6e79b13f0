"""A dependency-free progress bar for long conversions (stderr; one line per 10 % when not a TTY)."""

from __future__ import annotations

import sys
import time


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


class Progress:
    """``update(nbytes, label)`` after each tensor; ``close()`` prints the totals."""

    def __init__(self, total_bytes: int, what: str = "writing", stream=None, enabled: bool = True):
        self.total = max(int(total_bytes), 1)
        self.done = 0
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._next_line = 0.1

    def update(self, nbytes: int, label: str = "") -> None:
        self.done += int(nbytes)
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = human_bytes(self.done / elapsed) + "/s"
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r{self.what} [{bar:<30}] {100 * frac:5.1f}% {human_bytes(self.done)} "
                              f"{rate} {label[-48:]:<48}")
            self.stream.flush()
        elif frac >= self._next_line or self.done >= self.total:
            self.stream.write(f"{self.what}: {100 * frac:5.1f}% {human_bytes(self.done)} of "
                              f"{human_bytes(self.total)} ({rate})\n")
            self.stream.flush()
            while self._next_line <= frac:
                self._next_line += 0.1

    def close(self) -> float:
        """Finish the bar; returns the elapsed seconds."""
        elapsed = time.perf_counter() - self.start
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        return elapsed
