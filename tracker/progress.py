"""A dependency-free progress bar for long commands (rebuild, demo start-up, prune)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, unit: str = "", stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.label, self.unit, self.stream, self.width = label, unit, stream, width
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._tty = stream.isatty()

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last_draw < (0.1 if self._tty else 2.0):
            return
        self._last_draw = now
        fraction = done / total if total else 1.0
        filled = int(fraction * self.width)
        rate = done / max(now - self.started, 1e-9)
        line = (
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{done:,}/{total:,} {self.unit} ({fraction:.0%}, {rate:,.0f}/s)"
        )
        self.stream.write(("\r" + line) if self._tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
