"""Progress of long work (training steps, generating and scoring samples): one protocol, two views.

Work reports by calling ``progress(what, done, total)`` (:data:`Progress`); ``done == total``
says it is finished. Training, the suite runner and the embedders all report this way,
and whoever started the work chooses the view:

- :class:`TerminalProgress` draws one line in place and erases it when the work is done.
  The plugin draws it with pytest's capture suspended (as pytest's own live logging does),
  so nothing of it ends up in captured output, logs or a pipe, and only for a process
  whose stdout is a terminal (never an xdist worker, a ``-q`` run or a pipe).
- :class:`LineProgress` writes log lines (for a pipe or a CI log): the first step, about
  ten more, and one at least every few seconds, with the rate and the time left.

:func:`progress_for` picks one for a stream, as ``scenelora train --progress`` asks.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from ..text import printable

__all__ = ["LineProgress", "Progress", "TerminalProgress", "progress_for"]

#: ``progress(what, done, total)``: *done* of *total* units of the work *what* describes.
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


class LineProgress:
    """Log lines, ``Δ42_poetic loss 1.2796: step 2/200 3.1 steps/s eta 63s``: the first
    *unit*, about *lines* more for the whole work, and one at least every *every_s*
    seconds. A *done* lower than the last one starts a new piece of work; the same *done*
    again (the work saying it is finished) adds nothing."""

    def __init__(self, stream: IO[str] | None = None, lines: int = 10, every_s: float = 10.0,
                 unit: str = "step") -> None:
        self.stream = stream
        self.lines = lines
        self.every_s = every_s
        self.unit = unit
        self._done = -1
        self._started = self._last = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == self._done:
            return
        if done < self._done or self._done < 0:
            self._started, self._last = now, now
        self._done = done
        if done <= 0:
            return
        every = max(1, total // self.lines)
        if not (done == 1 or done % every == 0 or done >= total or now - self._last >= self.every_s):
            return
        self._last = now
        rate = done / max(now - self._started, 1e-9)
        eta = max(total - done, 0) / rate
        print(f"{printable(what)}: {self.unit} {done}/{total} {rate:.1f} {self.unit}s/s eta {eta:.0f}s",
              file=self.stream or sys.stderr, flush=True)


def progress_for(mode: str = "auto", stream: IO[str] | None = None) -> Progress | None:
    """The view *mode* asks for on *stream* (stderr by default): ``bar`` (``rich`` is the
    same) draws :class:`TerminalProgress`, ``plain`` writes :class:`LineProgress`, ``none``
    nothing, and ``auto`` a bar when *stream* is a terminal and lines otherwise."""
    stream = stream or sys.stderr
    if mode == "none":
        return None
    if mode in ("bar", "rich") or (mode == "auto" and stream.isatty()):
        width = shutil.get_terminal_size((80, 24)).columns
        return TerminalProgress(lambda text: (stream.write(text), stream.flush()), width=width)
    return LineProgress(stream)
