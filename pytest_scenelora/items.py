"""pytest collection of suite files: one test item per check and adapter.

``suites/registers.yaml::registers_unpack[Δ42_poetic]`` is an ordinary pytest item, so
``-k``, ``--lf``, ``-x`` and JUnit XML work as usual. Failures print the verdict in the
user's terms (score, interval, threshold, the worst sample), never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .checks.kind import NotApplicable
from .engine import adapters as adapter_files
from .errors import SceneloraError, UsageError
from .session import SESSION_KEY
from .suite import CheckSpec, Suite, SuiteError, check_references, load_suite

if TYPE_CHECKING:
    from .checks.kind import CheckKind
    from .scoring.verdict import Verdict
    from .session import SceneSession


def registered_kinds(node: pytest.Node) -> list[CheckKind]:
    """The check kinds every ``pytest_scenelora_check_kinds`` implementation that applies to
    *node* returns: the plugin's shipped ones, installed plugins' and conftest files'."""
    kinds: list[CheckKind] = []
    for group in node.ihook.pytest_scenelora_check_kinds():
        if not isinstance(group, list | tuple):
            raise UsageError(f"pytest_scenelora_check_kinds returned {group!r}; return a list of CheckKind")
        kinds.extend(group)
    return kinds


class CheckFailed(Exception):
    """A check's verdict was fail or inconclusive, or it regressed against the baseline."""

    def __init__(self, verdict: Verdict, regression: str | None = None) -> None:
        lines = [] if verdict.passed else [verdict.explain()]
        if regression:
            lines.append(f"regressed: {regression}" if lines else regression)
        super().__init__("\n".join(lines))
        self.verdict = verdict
        self.regression = regression


class SuiteFile(pytest.File):
    """A YAML suite; collecting it validates it completely."""

    def collect(self) -> Iterator[CheckItem]:
        from .scenes import load_world

        session: SceneSession = self.config.stash[SESSION_KEY]
        try:
            suite = load_suite(self.path, kinds=registered_kinds(self))
            world = load_world(suite.scenes, suite.topics, suite.registers)
            check_references(suite, set(world.scenes.scenes), set(world.topics), set(world.registers))
            names = self._adapters(suite, session)
            self._note_prompt_format(suite, session, names)
        except SceneloraError as exc:
            raise self.CollectError(str(exc)) from None
        for spec in suite.checks:
            for name in names:
                yield CheckItem.from_parent(self, name=f"{spec.name}[{name}]", suite=suite,
                                            spec=spec, adapter=name)

    def _note_prompt_format(self, suite: Suite, session: SceneSession, names: list[str]) -> None:
        """A suite with a ``prompt_format:`` of its own says so (when it differs from the
        run's) and warns about each of its adapters trained in another format; a format the
        base cannot take is this suite's error, at that line."""
        if suite.prompt_format is None:
            return
        try:
            used = session.resolve_format(suite.prompt_format)
            lines = session.prompt_format_mismatches(suite.prompt_format, names,
                                                     used_by=f"{self.path.name} tests it in",
                                                     fix="prompt_format:")
        except SceneloraError as exc:
            raise SuiteError(suite.path, suite.prompt_format_line, str(exc)) from None
        notes = [f"scenelora: warning: {line}" for line in lines]
        if used != session.prompt_format:
            notes.insert(0, f"scenelora: {self.path.name} uses prompt format {used} (its prompt_format: "
                            f"{suite.prompt_format}; the run's is {session.prompt_format})")
        session.notices.extend(n for n in notes if n not in session.notices)

    def _adapters(self, suite: Suite, session: SceneSession) -> list[str]:
        if session.adapter_names:
            chosen = [n for n in session.adapter_names if suite.selects(n)]
            if not chosen:
                pytest.skip(f"{self.path.name}: no adapter given matches {suite.adapters!r} "
                            f"(given: {', '.join(session.adapter_names)})", allow_module_level=True)
            return chosen
        if suite.adapter_dir is None:
            pytest.skip(f"{self.path.name}: needs --adapter PATH (or `adapter_dir:` in the suite)",
                        allow_module_level=True)
        if not suite.adapter_dir.is_dir():
            pytest.skip(f"{self.path.name}: no adapters in {suite.adapter_dir} yet; train them with "
                        f"`scenelora train --all --out {suite.adapter_dir}` or pass --adapter PATH",
                        allow_module_level=True)
        found = {adapter_files.adapter_name(p): p for p in adapter_files.discover([suite.adapter_dir])}
        chosen = [n for n in found if suite.selects(n)]
        if not chosen:
            raise SuiteError(suite.path, suite.adapters_line,
                             f"adapters {suite.adapters!r} matches no adapter in {suite.adapter_dir} "
                             f"(it holds: {', '.join(found) or 'none'}); fix the glob or the directory")
        session.add_adapter_paths(found[n] for n in chosen)
        return chosen


class CheckItem(pytest.Item):
    def __init__(self, *, suite: Suite, spec: CheckSpec, adapter: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.spec = spec
        self.adapter = adapter
        self.add_marker(pytest.mark.scenelora(kind=spec.kind, adapter=adapter))

    def runtest(self) -> None:
        runner = self.config.stash[SESSION_KEY].runner
        try:
            verdict = runner.run(self.suite, self.spec, self.adapter)
        except NotApplicable as exc:  # reported at the check's own line (reportinfo)
            raise pytest.skip.Exception(str(exc), _use_item_location=True) from None
        self.user_properties.append(("scenelora_verdict", json.dumps(verdict.to_dict(), ensure_ascii=False)))
        record = self.record(verdict)
        self.user_properties.append(("scenelora_record", json.dumps(record, ensure_ascii=False)))
        regression = record["baseline"]["line"] if record["baseline"] and \
            record["baseline"]["change"] == "regressed" else None
        if not verdict.passed or regression:
            raise CheckFailed(verdict, regression)

    def record(self, verdict: Verdict) -> dict[str, Any]:
        """What the results document keeps of this item besides the verdict itself (which
        travels as ``scenelora_verdict``): where the check is, what ran it, and how it
        compares with the baseline. Built here, on the worker that loaded the models."""
        session = self.config.stash[SESSION_KEY]
        try:
            suite = self.path.relative_to(self.config.rootpath).as_posix()
        except ValueError:
            suite = self.path.as_posix()
        record: dict[str, Any] = {
            "id": self.nodeid, "suite": suite, "line": self.spec.line, "name": self.spec.name,
            "kind": self.spec.kind, "adapter": self.adapter, "tolerance": self.spec.params.get("tolerance"),
            "prompt_format": session.resolve_format(self.suite.prompt_format), "baseline": None,
        }
        # from the loaded models, or from the files' headers on a warm run that loads none
        runner = session.runner
        record["base"] = runner.base_record()
        identity = runner.adapter(self.adapter)
        paths = dict(zip(session.adapter_names, session.adapter_paths, strict=False))
        record["adapter_info"] = {
            "content_hash": identity.content_hash, "scene": identity.scene, "role": identity.role,
            "path": str(paths[self.adapter]) if self.adapter in paths else None,
        }
        if session.baseline is not None:
            from .reporting.baseline import baseline_date, compare_record

            stored = next((r for r in session.baseline["results"] if r["id"] == self.nodeid), None)
            settings = session.settings
            family = 1 if settings.multiplicity == "none" else \
                sum(isinstance(item, CheckItem) for item in self.session.items)
            comparison = compare_record(stored, {**record, "verdict": verdict.to_dict()},
                                        seed=session.settings.seed, framing=settings.regression,
                                        family=family,
                                        baseline_date=baseline_date(session.baseline))
            record["baseline"] = {**comparison.to_dict(), "line": comparison.line()}
        return record

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CheckFailed):
            return f"{self.path}:{self.spec.line}: {excinfo.value}"
        if isinstance(excinfo.value, SceneloraError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, max(self.spec.line - 1, 0), f"{self.spec.kind}[{self.adapter}]"


def add_shipped_suites(session: pytest.Session, items: list[pytest.Item]) -> str | None:
    """``pytest --adapter X.safetensors`` in a project with no suite of its own: the command
    the product is named for. When adapters were given and nothing at all was collected
    (no path named, no test of the project's own), the shipped suites are collected and
    run; when the project has tests of its own or paths were named, nothing is added and
    the returned line says how to run them. Returns the line to show (None: the project
    has a suite file, even one whose items all skip, or no adapter was given)."""
    config = session.config
    scene_session: SceneSession = config.stash[SESSION_KEY]
    if not scene_session.settings.adapters or scene_session.suite_files:
        return None
    from .shipped import suites_dir
    from .suite import is_suite

    folder = suites_dir()
    if items or config.args_source is pytest.Config.ArgsSource.ARGS:
        return (f"scenelora: no suite was collected; the shipped suites ({folder}) run with "
                "`pytest --pyargs pytest_scenelora.suites --adapter ...`, and `scenelora init` copies "
                "them into this project to edit")
    paths = sorted(p for p in folder.glob("*.yaml") if is_suite(p))
    for path in paths:
        # named as in the repository (suites/registers.yaml::...), not by a path up and out
        # of the project's root
        node = SuiteFile.from_parent(session, path=path, nodeid=f"suites/{path.name}")
        report = config.hook.pytest_make_collect_report(collector=node)
        if report.failed or report.skipped:
            config.hook.pytest_collectreport(report=report)
        if report.passed:
            items.extend(report.result)
    names = ", ".join(p.name for p in paths)
    return (f"scenelora: no test in this project: running the {len(paths)} shipped suites ({names}, in "
            f"{folder}) on the adapters given; `scenelora init` copies them here to edit")
