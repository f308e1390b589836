"""One exception hierarchy for everything pytest-scenelora refuses.

Each error subclasses the builtin a caller would expect too (as PEFT's
``NoMatchingPeftModuleError(PeftError, ValueError)``), and its message is one line that
says what is wrong, names the file, and says what to do.
"""

from __future__ import annotations


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
