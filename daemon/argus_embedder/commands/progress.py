"""A dependency-free progress bar on stderr (in place on a terminal, lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`with Progress("ingest", total) as bar: bar.advance(n)`."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._started = time.monotonic()
        self._last_line = 0.0

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._draw(force=True)
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def advance(self, count: int = 1) -> None:
        self.done += count
        self._draw()

    def update(self, done: int) -> None:
        self.done = done
        self._draw()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < (0.1 if self._tty else 2.0):
            return
        self._last_line = now
        fraction = self.done / self.total if self.total else 1.0
        width = 30
        filled = int(width * min(fraction, 1.0))
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        line = (
            f"{self.label:<10} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total} ({fraction:4.0%}) {rate:6.1f}/s"
        )
        self.stream.write(("\r" + line) if self._tty else (line + "\n"))
        self.stream.flush()
