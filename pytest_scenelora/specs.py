"""What a suite says, as data: its checks, their parameters, and the error for a bad one.

The suite loader (:mod:`.suite`) builds these; check kinds (:mod:`.checks`) read them.
Nothing here reads a file or knows a kind.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scenes import SceneFileError


class SuiteError(SceneFileError):
    """A suite file is malformed; the message is ``path:line: ...``."""


class Scorer(str, enum.Enum):
    EMBEDDING = "embedding"
    CHAR_NGRAM = "char-ngram"


@dataclass(frozen=True)
class Param:
    """One parameter of a check kind: its type, default and allowed range."""

    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""


@dataclass(frozen=True)
class CheckSpec:
    kind: str
    name: str
    params: Mapping[str, Any]
    line: int
    key_lines: Mapping[str, int] = field(default_factory=dict)
    #: the :class:`~.checks.kind.CheckKind` that runs it (the suite loader sets it)
    definition: Any = field(default=None, compare=False, repr=False)

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class GenerationSpec:
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_p: float = 0.95


@dataclass(frozen=True)
class Suite:
    path: Path
    title: str
    scenes: Path | None
    topics: Path | None
    registers: Path | None
    adapters: str
    adapter_dir: Path | None
    scorer: Scorer
    embedder: str | None
    generation: GenerationSpec
    checks: tuple[CheckSpec, ...]
    adapters_line: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: ``plain``, ``chat`` or ``auto``: how this suite's prompts reach the base; None: the
    #: run's ``--prompt-format``
    prompt_format: str | None = None
    prompt_format_line: int = 0

    def selects(self, adapter_name: str) -> bool:
        return fnmatch.fnmatchcase(adapter_name, self.adapters)
