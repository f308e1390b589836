"""A one-line progress bar for long work (generating and scoring samples), on the terminal only.

pytest captures output while a test runs, so the bar is drawn with capture suspended (as
pytest's own live logging does) and erased when the work is done: nothing of it ends up in
captured output, logs or a pipe. The plugin only makes one for a process whose stdout is
a terminal (never for an xdist worker, a ``-q`` run or a pipe); elsewhere the runner
reports progress to a hook that does nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..text import printable

__all__ = ["Progress", "TerminalProgress"]

Progress = Callable[[str, int, int], None]


def progress_line(what: str, done: int, total: int, width: int, bar_width: int = 24) -> str:
    """``scenelora: ██████░░░░ 12/32 generating 32 samples (Δ42_poetic)``, cut to *width*
    (the bar and the count first, so a narrow terminal cuts the description). The
    description names adapters, so its control characters are shown escaped."""
    filled = round(bar_width * done / total) if total else bar_width
    bar = "█" * filled + "░" * (bar_width - filled)
    line = f"scenelora: {bar} {done}/{total} {printable(what)}"
    return line if len(line) < width else line[: max(width - 2, 10)] + "…"


class TerminalProgress:
    """Draws :func:`progress_line` in place (``\\r``) while ``done < total``, erases it after.

    *write* puts text on the terminal; *suspend* is a context manager that lifts pytest's
    capture for the duration of a write; *begin* runs once before the first draw (it ends
    pytest's current line of dots, so the bar gets a line of its own).
    """

    def __init__(self, write: Callable[[str], Any], *, width: int = 80,
                 suspend: Callable[[], contextlib.AbstractContextManager] | None = None,
                 begin: Callable[[], Any] | None = None, min_interval: float = 0.1) -> None:
        self.write = write
        self.width = width
        self.suspend = suspend or contextlib.nullcontext
        self.begin = begin
        self.min_interval = min_interval
        self._shown = 0  # length of the line on screen
        self._last = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        finished = done >= total
        now = time.monotonic()
        if not finished and self._shown and now - self._last < self.min_interval:
            return
        self._last = now
        with self.suspend():
            if finished:
                if self._shown:
                    self.write("\r" + " " * self._shown + "\r")
                    self._shown = 0
                return
            if not self._shown and self.begin is not None:
                self.begin()
            line = progress_line(what, done, total, self.width)
            self.write("\r" + line.ljust(self._shown))
            self._shown = max(self._shown, len(line))
