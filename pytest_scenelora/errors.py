"""One exception hierarchy for everything pytest-scenelora refuses.

Each error subclasses the builtin a caller would expect too (as PEFT's
``NoMatchingPeftModuleError(PeftError, ValueError)``), and its message is one line that
says what is wrong, names the file, and says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class SceneloraError(Exception):
    """Base of every error this package raises on purpose."""


class BaseModelNotFoundError(SceneloraError, FileNotFoundError):
    """A base model is neither a preset, a local directory, nor in the local HF cache."""


class BaseModelError(SceneloraError, ValueError):
    """A base model exists but cannot be used as asked (e.g. a quantization it can't do)."""


class AdapterFormatError(SceneloraError, ValueError):
    """An adapter file or directory is unreadable, corrupt, unsafe or incomplete."""


class AdapterMismatchError(SceneloraError, ValueError):
    """An adapter does not fit the base model (shapes, target modules, keys)."""


class UnsafeFormatError(AdapterFormatError):
    """A pickle-based format, which is refused because unpickling runs code."""


class LibraryError(SceneloraError, KeyError):
    """An adapter library was asked for an adapter it does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0]) if self.args else ""


class ScorerError(SceneloraError, ValueError):
    """A scorer cannot be built as asked: an embedder that is not on disk, a bad kind."""


class CheckInputError(SceneloraError, ValueError):
    """A check was given inputs it cannot judge (no samples, mismatched shapes)."""


class UsageError(SceneloraError, ValueError):
    """An option or argument value is invalid."""


class LockTimeoutError(SceneloraError, TimeoutError):
    """A lock stayed held by another process longer than ``SCENELORA_LOCK_TIMEOUT``."""


class CorruptCacheWarning(UserWarning):
    """A cache file was unreadable: it was moved aside and the run carried on without it.

    A warning, not an error: a cache only saves time, so losing one must never fail a run.
    """


class TrainingError(SceneloraError, ValueError):
    """A training request that cannot be carried out as asked (settings, targets, base)."""


class TrainingDataError(SceneloraError, ValueError):
    """Training data is malformed; the message starts ``path:line:`` for each bad line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "no problems"
        more = len(self.problems) - 1
        if more:
            lines = ", ".join(p.split(": ", 1)[0].rsplit(":", 1)[-1] for p in self.problems[1:6])
            first += f" (and {more} more bad line{'s' if more > 1 else ''}: {lines}"
            first += ", ...)" if more > 5 else ")"
        super().__init__(first)


class SceneFileError(SceneloraError, ValueError):
    """A scenes, topics, registers or suite file is malformed; the message is ``path:line: ...``."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {message}")
