"""One scenelora session per pytest session: the base, the adapter library, lazily.

Nothing heavy happens until a test asks for it, so ``pytest --collect-only`` and runs
that never touch a model stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .engine import adapters as adapter_files
from .errors import SceneloraError
from .settings import Settings

if TYPE_CHECKING:
    from .checks.runner import SuiteRunner
    from .engine.bases import LoadedBase
    from .engine.library import AdapterLibrary


class SceneSession:
    """The run's settings, adapters and (lazily) base, library and runner."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Cheap and eager: a wrong --adapter is a usage error before collection.
        self.adapter_paths: list[Path] = (adapter_files.discover(settings.adapters)
                                          if settings.adapters else [])
        self.adapter_names: list[str] = [adapter_files.adapter_name(p) for p in self.adapter_paths]
        self.records: list[dict] = []  # every check item's record for the results document
        self.progress: Callable[[str, int, int], None] | None = None  # a terminal progress bar
        self.suite_files = 0  # suite files collected from the project (a skipped one counts)
        self.notices: list[str] = []  # lines for the user, e.g. that the shipped suites ran
        self._resolved_formats: dict[str, str] = {}  # a suite's prompt_format: -> plain|chat
        self._formatters: dict[str, Callable[[str], str]] = {}  # plain|chat -> its formatter

    def add_adapter_paths(self, paths: Iterable[Path]) -> None:
        """Adapters a suite found in its own ``adapter_dir`` (when no --adapter was given)."""
        for path in paths:
            if path not in self.adapter_paths:
                self.adapter_paths.append(path)
                if self.library_loaded:
                    self.library.add(path)

    # The base, library and runner are cached properties: made on first use, then kept in
    # the instance. These say whether that has happened, without making them.
    @property
    def base_loaded(self) -> bool:
        """Whether the base model is in memory (asking does not load it)."""
        return "base" in self.__dict__

    @property
    def library_loaded(self) -> bool:
        """Whether the adapter library is in memory (asking does not load it)."""
        return "library" in self.__dict__

    @property
    def runner_if_made(self) -> SuiteRunner | None:
        """The runner, if a check has needed it; None otherwise (asking makes none)."""
        return self.__dict__.get("runner")

    @cached_property
    def baseline(self) -> dict | None:
        """The stored results this run is gated against (None: no gate, or it is being
        rewritten by --scenelora-update-baseline)."""
        if not self.settings.baseline_path or self.settings.update_baseline:
            return None
        from .reporting.results import load_document

        return load_document(self.settings.baseline_path, what="baseline")

    @cached_property
    def runner(self) -> SuiteRunner:
        from .checks.runner import SuiteRunner

        runner = SuiteRunner(self)
        if self.progress is not None:
            runner.progress = self.progress
        return runner

    @cached_property
    def base(self) -> LoadedBase:
        from .engine.bases import load_base

        return load_base(self.settings.base_model, device=self.settings.device,
                         quantize=self.settings.quantize)

    @cached_property
    def prompt_format(self) -> str:
        """``plain`` or ``chat``: ``--prompt-format``, with ``auto`` resolved against the base
        (which it resolves, building or converting it when needed)."""
        return self.resolve_format(self.settings.prompt_format.value)

    def resolve_format(self, requested: str | None) -> str:
        """``plain`` or ``chat`` for a suite's ``prompt_format:`` (None: the run's
        ``--prompt-format``), ``auto`` resolved against the base; one line when the base
        cannot take it (``chat`` on a base without a template)."""
        from .engine.chat import PromptFormat, resolve_prompt_format

        if requested is None:
            return self.prompt_format
        if requested == PromptFormat.PLAIN.value:
            return requested
        if requested not in self._resolved_formats:
            from .engine.bases import resolve_base

            base_dir = resolve_base(self.settings.base_model)
            self._resolved_formats[requested] = resolve_prompt_format(requested, base_dir).value
        return self._resolved_formats[requested]

    def formatter(self, requested: str | None) -> Callable[[str], str]:
        """Plain prompt -> the text the model is given in *requested* (a suite's
        ``prompt_format:``; None: the run's): the chat template applied, or not."""
        from .engine.chat import PromptFormat, prompt_formatter

        resolved = self.resolve_format(requested)
        if resolved not in self._formatters:
            base_dir = Path()  # plain needs no base
            if resolved != PromptFormat.PLAIN.value:
                from .engine.bases import resolve_base

                base_dir = resolve_base(self.settings.base_model)
            self._formatters[resolved] = prompt_formatter(resolved, base_dir)
        return self._formatters[resolved]

    def prompt_format_mismatches(
        self, requested: str | None = None, names: Iterable[str] | None = None, *,
        used_by: str = "this run uses", fix: str = "--prompt-format",
    ) -> list[str]:
        """One line per adapter (of *names*; default all) whose metadata says it was trained
        with another prompt format than *requested* (a suite's ``prompt_format:``; None: the
        run's) resolves to; an adapter without the key was trained on plain prompts. *used_by*
        and *fix* say who tests it in that format and what would test it as it was trained."""
        from .engine.chat import LEGACY_FORMAT

        used = self.resolve_format(requested)
        chosen = None if names is None else set(names)
        lines = []
        for path in self.adapter_paths:
            try:
                info = adapter_files.read_adapter(path)
            except (SceneloraError, OSError):  # an unreadable adapter fails its own items, with its message
                continue
            if chosen is not None and info.name not in chosen:
                continue
            trained = info.metadata.get("prompt_format") or LEGACY_FORMAT.value
            if trained != used:
                lines.append(f"{info.name} was trained with prompt format {trained}, {used_by} "
                             f"{used} ({fix} {trained} tests it as it was trained)")
        return lines

    @cached_property
    def library(self) -> AdapterLibrary:
        from .engine.library import AdapterLibrary

        library = AdapterLibrary(self.base)
        for path in self.adapter_paths:
            library.add(path)
        return library

    def header_lines(self) -> list[str]:
        s = self.settings
        adapters = ", ".join(self.adapter_names) if self.adapter_names else "none (--adapter PATH)"
        lines = [
            f"scenelora: base {s.base_model}, device {s.device.value}, "
            f"quantize {s.quantize.value}, seed {s.seed}, "
            f"embedder {s.embedder or 'all-MiniLM-L6-v2 (packaged)'}",
            f"scenelora: adapters {adapters}",
        ]
        from .engine.gguf import describe_base_source

        source = describe_base_source(s.base_model)
        if source:
            lines.insert(1, f"scenelora: base {source}")
        try:
            prompt_format = self.prompt_format
        except SceneloraError as exc:  # a base not on disk: its items fail with the message
            lines.append(f"scenelora: prompt format {s.prompt_format.value} (not resolved: {exc})")
            return lines
        how = "" if prompt_format == s.prompt_format.value else f" ({s.prompt_format.value})"
        lines.append(f"scenelora: prompt format {prompt_format}{how}")
        lines += [f"scenelora: warning: {line}" for line in self.prompt_format_mismatches()]
        return lines


#: Where the plugin keeps the run's :class:`SceneSession` (``config.stash``).
SESSION_KEY = pytest.StashKey[SceneSession]()
