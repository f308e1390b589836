"""The pytest11 entry point: options, hooks and fixtures, delegating all real work.

Imported by pytest on every run of every project that has this package installed, so it
imports nothing heavy (no torch, transformers, peft or sentence-transformers) at module
level; ``tests/test_plugin_import.py`` holds it to that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .errors import SceneloraError
from .session import SESSION_KEY, SceneSession
from .settings import (
    Settings,
    parse_device,
    parse_multiplicity,
    parse_prompt_format,
    parse_quantization,
    parse_regression,
    parse_seed,
    parse_switch,
)

if TYPE_CHECKING:
    from .engine.bases import LoadedBase
    from .engine.library import AdapterHandle, AdapterLibrary
    from .engine.training import AdapterTrainer

__all__ = ["SESSION_KEY"]

_OPTIONS = (
    # (flag, ini name, help, type, metavar, default)
    ("--base-model", "scenelora_base_model",
     "base model: tiny (built locally), a preset, a local directory or a cached HF id",
     str, "tiny|ID|PATH", "tiny"),
    ("--device", "scenelora_device", "where models run (auto: cuda when available)",
     parse_device, "auto|cpu|cuda", "auto"),
    ("--quantize", "scenelora_quantize", "load the base quantized with bitsandbytes",
     parse_quantization, "none|8bit|4bit", "none"),
    ("--prompt-format", "scenelora_prompt_format",
     "how prompts are put to the base: plain text, its chat template (chat), or chat when it has "
     "one (auto); adapters must be trained the same way", parse_prompt_format, "plain|chat|auto", "plain"),
    ("--scenelora-seed", "scenelora_seed", "seed for sampling and bootstrap intervals",
     parse_seed, "N", "0"),
    ("--embedder", "scenelora_embedder",
     "sentence-transformers model for scoring: a local path or a cached id "
     "(default: the packaged all-MiniLM-L6-v2)", str, "NAME|PATH", ""),
    ("--scenelora-json", "scenelora_json",
     "write every verdict (per-sample scores, intervals, adapters, environment) to PATH as JSON",
     str, "PATH", ""),
    ("--scenelora-html", "scenelora_html",
     "write a self-contained HTML report (heatmap, register map, sample texts) to PATH", str, "PATH", ""),
    ("--scenelora-baseline", "scenelora_baseline",
     "fail checks that regress against this stored results file", str, "PATH", ""),
    ("--scenelora-multiplicity", "scenelora_multiplicity",
     "adjust the run's verdicts for their number: none (each at its own 95%), holm (no wrong "
     "decision in the whole run, at 95%) or bh (false discovery rate 5%)",
     parse_multiplicity, "none|holm|bh", "none"),
    ("--scenelora-regression", "scenelora_regression",
     "what regressing against the baseline means: drop (a significant drop beyond the tolerance) or "
     "non-inferiority (regressed unless shown no worse than the tolerance)",
     parse_regression, "drop|non-inferiority", "drop"),
    ("--scenelora-sequential", "scenelora_sequential",
     "keep sampling a check that is inconclusive at its `samples`, in batches, until it is decided or "
     "reaches its `max_samples` (off: judge `samples` alone)", parse_switch, "on|off", "on"),
)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)
    group = parser.getgroup("scenelora", "LoRA adapter behaviour tests (pytest-scenelora)")
    group.addoption(
        "--adapter", action="append", default=[], metavar="PATH", dest="scenelora_adapters",
        help="adapter to test: a .safetensors file, a PEFT folder, a directory of adapters "
             "or a glob (repeatable)",
    )
    parser.addini("scenelora_adapters", "adapters to test when --adapter is not given",
                  type="linelist", default=[])
    for flag, ini, help_text, type_, metavar, _default in _OPTIONS:
        # argparse %-formats option help ("95%" would break `pytest --help`); ini help is not
        group.addoption(flag, dest=ini, type=type_, metavar=metavar, default=None,
                        help=help_text.replace("%", "%%"))
        parser.addini(ini, help_text, default=None)
    group.addoption("--scenelora-update-baseline", action="store_true", default=None,
                    dest="scenelora_update_baseline",
                    help="store this run's results as the baseline (--scenelora-baseline PATH), "
                         "keeping stored checks that did not run")
    parser.addini("scenelora_update_baseline", "store this run's results as the baseline",
                  type="bool", default=False)


def _resolve(config: pytest.Config) -> Settings:
    values = {}
    for flag, ini, _help, type_, _metavar, default in _OPTIONS:
        value = config.getoption(ini)
        if value is None:
            raw = config.getini(ini) or default
            try:
                value = type_(raw)
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"[tool.pytest.ini_options] {ini}: {exc}") from None
        values[flag] = value
    adapters = config.getoption("scenelora_adapters") or config.getini("scenelora_adapters")
    return Settings(
        adapters=tuple(adapters),
        base_model=values["--base-model"],
        device=values["--device"],
        quantize=values["--quantize"],
        seed=values["--scenelora-seed"],
        embedder=values["--embedder"] or None,
        json_path=values["--scenelora-json"] or None,
        html_path=values["--scenelora-html"] or None,
        baseline_path=values["--scenelora-baseline"] or None,
        update_baseline=bool(config.getoption("scenelora_update_baseline")
                             or config.getini("scenelora_update_baseline")),
        prompt_format=values["--prompt-format"],
        multiplicity=values["--scenelora-multiplicity"],
        regression=values["--scenelora-regression"],
        sequential=values["--scenelora-sequential"] == "on",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenelora(kind, adapter): a scenelora check item")
    try:
        session = SceneSession(_resolve(config))
        session.baseline  # noqa: B018  a bad baseline file is a usage error, before any test runs
    except (SceneloraError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(VerdictCollector(session), "scenelora-verdicts")


@pytest.hookimpl(tryfirst=True)
def pytest_scenelora_check_kinds() -> list:
    """The shipped check kinds, registered like a user's (first, so they list first)."""
    from .checks.registry import shipped_kinds

    return shipped_kinds()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect YAML suites (files with a top-level ``checks:``), never other YAML."""
    from .suite import is_suite

    if is_suite(file_path):
        from .items import SuiteFile

        if SESSION_KEY in parent.config.stash:  # the project has suites of its own
            parent.config.stash[SESSION_KEY].suite_files += 1
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The run's facts; adapter names are file names anyone can propose, so each line is
    escaped (a newline and ``::error::`` in a name must not start a line of its own)."""
    from .reporting.github import escape_log

    session = config.stash.get(SESSION_KEY, None)
    return [escape_log(line) for line in session.header_lines()] if session else []


class VerdictCollector:
    """Gathers verdicts and their records as test reports arrive, from this process or from
    xdist workers (``user_properties`` travel with the reports), into the session's
    record; the process that saw them all publishes the JSON, HTML and baseline."""

    def __init__(self, session: SceneSession) -> None:
        self.session = session
        self.published: list[str] = []
        self.family = None  # the multiplicity adjustment's account, once the session finished

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = dict(report.user_properties)
        if "scenelora_verdict" in props:
            verdict = json.loads(props["scenelora_verdict"])
            if "scenelora_record" in props:
                self.session.records.append({**json.loads(props["scenelora_record"]), "verdict": verdict})

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """A progress bar for generation, only where a person watches a terminal: not in an
        xdist worker, not under ``-q``, not when stdout is a pipe or a file."""
        config = session.config
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if hasattr(config, "workerinput") or reporter is None or not reporter.isatty or \
                config.get_verbosity() < 0:
            return
        import sys

        from .engine.progress import TerminalProgress

        tw = config.get_terminal_writer()
        capman = config.pluginmanager.get_plugin("capturemanager")

        def begin() -> None:
            reporter.ensure_newline()
            if tw.width_of_current_line:
                tw.line()

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        self.session.progress = TerminalProgress(
            write, width=tw.fullwidth, begin=begin,
            suspend=capman.global_and_fixture_disabled if capman is not None else None)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):  # an xdist worker: the controller publishes
            return
        from .publish import publish, session_document

        prompt_format = None
        if self.session.records:
            with contextlib.suppress(SceneloraError):  # a base that failed to load said so in its items
                prompt_format = self.session.prompt_format
        records = self.session.records
        if records:
            from .reporting.family import adjust_records

            records, self.family = adjust_records(records, self.session.settings.multiplicity)
            if self.family.passes_lost and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self.session.records = records
        self.document = session_document(records, self.session.settings, self.session.baseline,
                                         prompt_format=prompt_format)
        if self.family is not None:
            self.document["multiplicity"] = self.family.to_dict()
        self.published = publish(self.document, self.session.settings)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for line in self.session.notices:
                reporter.write_line(line)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        from .reporting.github import annotations, in_github_actions
        from .reporting.terminal import record_summary, render_coherence

        config = terminalreporter.config
        records = self.session.records
        if records:
            baseline = (getattr(self, "document", None) or {}).get("baseline")
            if config.get_verbosity() < 0:
                terminalreporter.write_line(record_summary(records, baseline=baseline))
            else:
                terminalreporter.section("scenelora coherence")
                tw = config.get_terminal_writer()
                on_terminal = bool(getattr(sys.stdout, "isatty", lambda: False)())
                terminalreporter.write(render_coherence(records, color=tw.hasmarkup, width=tw.fullwidth,
                                                        baseline=baseline, fit=not on_terminal))
            if in_github_actions():
                for line in annotations(records, root=config.rootpath,
                                        workspace=os.environ.get("GITHUB_WORKSPACE")):
                    terminalreporter.write_line(line)
        family = self.family.lines() if self.family is not None else []
        for line in [*self.session.notices, *family, *self.published]:
            terminalreporter.write_line(line)
        runner = self.session.runner_if_made
        if runner is not None and (runner.generated or runner.reused):
            terminalreporter.write_line(
                f"scenelora: generated {runner.generated} new samples, reused {runner.reused} from the cache "
                f"({runner.cache.path})"
            )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "adapter" not in metafunc.fixturenames:
        return
    names = metafunc.config.stash[SESSION_KEY].adapter_names
    if names:
        metafunc.parametrize("adapter", names, ids=names, indirect=True, scope="session")
    else:
        metafunc.parametrize("adapter", [None], ids=["no-adapter"], indirect=True, scope="session")


@pytest.hookimpl(tryfirst=True)  # before --lf, -k and the rest see the ids
def pytest_collection_modifyitems(session: pytest.Session, items: list[pytest.Item]) -> None:
    """Run the shipped suites when adapters were given and no suite was collected (see
    :func:`.items.add_shipped_suites`), and give tests that use the ``adapter`` fixture
    node ids with the adapter's own name.

    pytest writes non-ASCII parameter ids as escapes (``test_speaks[\\u039442_poetic]``);
    adapter names are Unicode by design (``Δ42_poetic``, Cyrillic), and a node id the user
    cannot read or type back into ``-k`` or a test path is no id at all. Suite items are
    named by us and are already Unicode. (A test path names such a test by pytest's own
    escaped spelling, which pytest matches before this hook runs.)
    """
    if SESSION_KEY in session.config.stash:
        from .items import add_shipped_suites

        notice = add_shipped_suites(session, items)
        if notice:
            session.config.stash[SESSION_KEY].notices.append(notice)
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("adapter") if callspec is not None else None
        if not isinstance(name, str) or name.isascii():
            continue
        escaped = name.encode("unicode_escape").decode("ascii")
        if escaped in item.name:
            item.name = item.name.replace(escaped, name)
            _set_nodeid(item, item.nodeid.replace(escaped, name))


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    # pytest has no public setter: 9.x keeps a structured ``_id``, 8.x a string ``_nodeid``
    if hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(nodeid)
    else:
        item._nodeid = nodeid


def _session(request: pytest.FixtureRequest) -> SceneSession:
    return request.config.stash[SESSION_KEY]


def _or_fail(thunk):
    try:
        return thunk()
    except SceneloraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def scenelora_base(request: pytest.FixtureRequest) -> LoadedBase:
    """The base model (``--base-model``), loaded once per session on ``--device``."""
    session = _session(request)
    return _or_fail(lambda: session.base)


@pytest.fixture(scope="session")
def adapter_library(request: pytest.FixtureRequest, scenelora_base: LoadedBase) -> AdapterLibrary:
    """Every ``--adapter`` attached to the one base: switch, combine, mix in a batch, merge."""
    session = _session(request)
    return _or_fail(lambda: session.library)


@pytest.fixture(scope="session")
def train_adapter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AdapterTrainer:
    """Train (or reuse, from the content-hash cache) a LoRA adapter on ``--base-model``.

    ``train_adapter(scene="Δ42", role="poetic", steps=150, r=16)`` returns the result
    (``.path``, ``.info``, ``.reused_cache``). pytest-xdist workers asking for the same
    adapter train it once. Silent under capture; ``progress=True`` logs steps.
    """
    from .engine.training import AdapterTrainer

    settings = _session(request).settings
    return AdapterTrainer(base=settings.base_model, device=settings.device, quantize=settings.quantize,
                          out_dir=tmp_path_factory.mktemp("trained-adapters"),
                          prompt_format=settings.prompt_format.value)


@pytest.fixture(scope="session")
def adapter(request: pytest.FixtureRequest) -> Iterator[AdapterHandle]:
    """One adapter from ``--adapter``; a test using it runs once per adapter."""
    if request.param is None:
        pytest.skip("needs --adapter PATH (a .safetensors file, a folder, or a glob)")
    library = request.getfixturevalue("adapter_library")
    yield library.handle(request.param)
