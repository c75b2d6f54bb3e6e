"""A one-line progress bar on a terminal, nothing at all when stderr is not one."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(done)` redraws at most 10 times a second; `close()` ends the line."""

    def __init__(
        self, total: int | None, unit: str, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, note: str = "", fraction: float | None = None) -> None:
        """`done` units so far; `fraction` of the work done when it is not done/total
        (the scorer knows bytes read, not the number of rows still to come)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done != self.total:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        if fraction is None and self.total:
            fraction = done / self.total
        if fraction is not None:
            frac = min(max(fraction, 0.0), 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("inf")
            eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
            line = f"[{'#' * int(frac * 30):<30}] {frac:4.0%} {done:,} {self.unit} {rate:,.0f}/s ETA {eta_s}"
        else:
            line = f"{done:,} {self.unit} {rate:,.0f}/s {elapsed:.0f}s"
        if note:
            line += f" {note}"
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
