"""The pull-request gate: the adapters a pull request changes, judged by its target branch.

``scenelora gate --base origin/main --head <pr commit>`` is what the adapter-gate workflow
runs. A pull request can change anything in the repository, so the gate takes exactly one
thing from it, the adapter files it changed, and everything else from the target branch:

- the suites, their thresholds, tolerances and ``adapters:`` globs come from a fresh
  worktree of the target branch (a pull request that sets ``tolerance: 100``,
  ``threshold: -1`` or a glob that matches nothing changes nothing here);
- the baseline is the target branch's committed results file, or, where it has none, is
  measured on the target branch's versions of the changed adapters with the same suites;
- the code is the package that runs this module: the workflow installs the target branch's
  before calling it, and pytest runs from the target worktree with its rootdir, its
  configuration file and its ``conftest.py`` search fenced into that worktree.

The changed adapters are read from the pull request's commit as Git blobs (``git cat-file``)
and written as fresh regular files; nothing is checked out from it and no link is followed.
A changed path that is a symbolic link or a submodule is refused, and the gate fails when an
adapter changed but no suite tested it. Every name the gate prints goes through
:func:`~.github.escape_log`, and pytest's own output is fenced with ``::stop-commands::``
under GitHub Actions: a file name cannot issue a workflow command. The annotations and the
step summary are written here, from the results file.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..engine.adapters import PEFT_CONFIG
from ..errors import UsageError
from ..reporting.github import (
    annotations,
    escape_data,
    escape_log,
    escape_markdown,
    in_github_actions,
    step_summary,
)
from .pr_changes import (
    REGULAR,
    GatePlan,
    blob,
    changed_adapters,
    commit_of,
    git,
    materialise,
    relative_parts,
    tree_entries,
)

__all__ = ["GateOptions", "GateResult", "add_gate_command", "run_gate"]

# ------------------------------------------------------------------------------ pytest


def _pytest_config(worktree: Path) -> str:
    """The target branch's pytest configuration file, or ``os.devnull`` when it has none (so
    pytest does not look for one in the folders above the worktree)."""
    for name in ("pytest.ini", ".pytest.ini"):
        if (worktree / name).is_file():
            return str(worktree / name)
    try:
        pyproject = (worktree / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pyproject = ""
    if re.search(r"^\[tool\.pytest(\.ini_options)?\]", pyproject, re.MULTILINE):
        return str(worktree / "pyproject.toml")
    for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(worktree / name, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if parser.has_section(section):
            return str(worktree / name)
    return os.devnull


def run_pytest(worktree: Path, suites: str, adapters: Sequence[Path], extra: Sequence[str], *,
               out: TextIO, fence: bool) -> int:
    """The target branch's suites on *adapters*, from the worktree, fenced in.

    The plugin's own GitHub output is switched off (``GITHUB_ACTIONS`` unset): the gate
    writes the annotations and the summary from the results file. Under GitHub Actions the
    output is wrapped in ``::stop-commands::`` with a token nobody can guess, so no text a
    pull request controls (a name, adapter metadata) is read as a workflow command.
    """
    # -P (Python 3.11+): nothing imported from the worktree's folder, only the installed
    # package that runs the gate; on 3.10 the worktree's own copy of the target branch is
    # what `-m` finds first, the same code
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    command = [sys.executable, *safe_path, "-m", "pytest", suites, "-p", "no:cacheprovider",
               "-c", _pytest_config(worktree), "--rootdir", str(worktree), "--confcutdir", str(worktree)]
    for path in adapters:
        command += ["--adapter", str(path)]
    command += list(extra)
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY")}
    token = secrets.token_hex(16)
    if fence:
        print(f"::stop-commands::{token}", file=out, flush=True)
    try:
        with subprocess.Popen(command, cwd=worktree, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # as it comes: a long run shows its progress in the log
                out.write(line.decode("utf-8", "replace"))
                out.flush()
        return proc.returncode
    finally:
        if fence:
            print(f"::{token}::", file=out, flush=True)


# -------------------------------------------------------------------------------- gate


@dataclass
class GateOptions:
    repo: Path
    base: str
    head: str = "HEAD"
    adapters_dir: str = "adapters"
    suites: str = "suites"
    baseline_file: str = "scenelora-baseline.json"
    out: Path = Path("scenelora-gate")
    pytest_args: Sequence[str] = ()


@dataclass
class GateResult:
    code: int
    failures: list[str]
    tested: list[str]


class _Log:
    """The gate's own lines: each escaped; failures also as ``::error`` under GitHub Actions."""

    def __init__(self, out: TextIO, github: bool) -> None:
        self.out, self.github = out, github

    def say(self, line: str) -> None:
        print(f"scenelora gate: {escape_log(line)}", file=self.out, flush=True)

    def fail(self, line: str) -> None:
        self.say(line)
        if self.github:
            print(f"::error title=scenelora gate::{escape_data(escape_log(line))}", file=self.out, flush=True)


def _tested_names(results: Path) -> set[str] | None:
    try:
        document = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {str(r.get("adapter")) for r in document.get("results", ()) if r.get("adapter") is not None}


def _summary(results: Path, failures: Sequence[str], plan: GatePlan,
             base_name: str) -> str:
    """The step summary: the gate's verdict and, when pytest wrote results, the report."""
    head = "❌ the adapter gate failed" if failures else "✅ the adapter gate passed"
    out = [f"## {head}", "", f"Judged with the suites, thresholds and tolerances of "
                            f"<code>{escape_markdown(base_name)}</code>.", ""]
    if plan.adapters:
        out += ["Changed adapters:", "",
                *(f"- <code>{escape_markdown(a.path)}</code>" for a in plan.adapters), ""]
    if failures:
        out += ["### Why", "", *(f"- {escape_markdown(line)}" for line in failures), ""]
    try:
        document = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        document = None
    if document and document.get("results"):
        out.append(step_summary(document["results"], baseline=document.get("baseline"),
                                environment=document.get("environment")))
    return "\n".join(out) + "\n"


def run_gate(options: GateOptions, *, out: TextIO | None = None,
             environ: Mapping[str, str] | None = None) -> GateResult:
    """Judge the adapters *head* changed with *base*'s suites; see the module's docstring.

    Returns exit code 0 (passed, or no adapter changed) or 1 (failed), with the reasons;
    raises :class:`~.errors.UsageError` when the gate cannot run as asked (a ref that names
    no commit, a folder that is not a repository).
    """
    out = out or sys.stdout
    environ = os.environ if environ is None else environ
    github = in_github_actions(environ)
    log = _Log(out, github)
    repo = Path(options.repo).resolve()
    for what, value in (("--adapters", options.adapters_dir), ("--suites", options.suites),
                        ("--baseline-file", options.baseline_file)):
        try:
            relative_parts(value)
        except UsageError:
            raise UsageError(f"{what} {value!r}: give a path relative to the repository root") from None
    base, head = commit_of(repo, options.base), commit_of(repo, options.head)
    plan = changed_adapters(repo, base, head, options.adapters_dir)
    failures: list[str] = []
    outdir = Path(options.out).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    results = outdir / "scenelora-results.json"
    baseline = outdir / "target-baseline.json"
    for stale in (results, baseline):
        stale.unlink(missing_ok=True)

    log.say(f"judging {options.head} ({head[:12]}) with the suites of {options.base} ({base[:12]})")
    for path in plan.deleted:
        log.say(f"{path}: deleted (nothing to test)")
    for path in plan.other:
        log.say(f"{path}: changed, but is no adapter file (not tested)")
    for line in plan.refused:
        log.fail(line)
        failures.append(line)
    if not plan.adapters and not plan.refused:
        log.say(f"no adapter changed under {options.adapters_dir}/: nothing to gate")
        return _finish(log, environ, [], [], plan, results, options.base)
    if plan.refused:
        return _finish(log, environ, failures, [], plan, results, options.base)
    return _judge(repo, base, head, plan, options, log, out, environ, failures)


def _judge(repo: Path, base: str, head: str, plan: GatePlan, options: GateOptions, log: _Log,
           out: TextIO, environ: Mapping[str, str], failures: list[str]) -> GateResult:
    """Run the target branch's suites, in a worktree of it, on the changed adapters as the
    pull request holds them, against the target's baseline."""
    github = in_github_actions(environ)
    outdir = Path(options.out).resolve()
    results = outdir / "scenelora-results.json"
    baseline = outdir / "target-baseline.json"
    scratch = Path(tempfile.mkdtemp(prefix="scenelora-gate-"))
    worktree = scratch / "target"
    try:
        git(repo, "worktree", "add", "--detach", "--quiet", str(worktree), base)
        candidates, incomplete = [], set()
        for change in plan.adapters:
            written = materialise(repo, head, change, scratch / "candidate")
            if written is None:
                incomplete.add(change.path)
                failures.append(f"{change.path}: changed, but the pull request holds no complete adapter "
                                f"there (a PEFT folder needs its {PEFT_CONFIG})")
                log.fail(failures[-1])
            else:
                candidates.append(written)
                log.say(f"testing {change.path}")
        if not (worktree / options.suites).exists():
            raise UsageError(f"{options.base} has no {options.suites}: nothing to judge the adapters with")
        _target_baseline(repo, base, plan, options, worktree, scratch, baseline, log, out, github)
        tested: set[str] = set()
        if candidates:
            gate = ["--scenelora-baseline", str(baseline)] if baseline.is_file() else []
            reports = ["--scenelora-json", str(results),
                       "--scenelora-html", str(outdir / "scenelora-report.html")]
            code = run_pytest(worktree, options.suites, candidates, [*gate, *reports, *options.pytest_args],
                              out=out, fence=github)
            tested = _tested_names(results) or set()
            if github:
                document = _load(results)
                records = document.get("results", []) if document else []
                for line in annotations(records, root=worktree, workspace=str(worktree)):  # suites/…
                    print(line, file=out, flush=True)
            if code not in (0, 5):  # 5: nothing collected, said below adapter by adapter
                failures.append(f"the suites of {options.base} failed on the pull request's adapters "
                                f"(pytest exit code {code}; see its output above)")
                log.fail(failures[-1])
        for change in plan.adapters:
            if change.path not in incomplete and change.name not in tested:
                failures.append(f"{change.path}: changed, but no suite of {options.base} tested it "
                                f"(no suite's adapters: glob matches {change.name!r}, or it did not load)")
                log.fail(failures[-1])
        return _finish(log, environ, failures, sorted(tested), plan, results, options.base)
    finally:
        with contextlib.suppress(UsageError):
            git(repo, "worktree", "remove", "--force", str(worktree))
        shutil.rmtree(scratch, ignore_errors=True)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _target_baseline(repo: Path, base: str, plan: GatePlan, options: GateOptions, worktree: Path,
                     scratch: Path, baseline: Path, log: _Log, out: TextIO, github: bool) -> None:
    """The target branch's committed baseline, or one measured on its versions of the
    changed adapters with its suites (the same checks and node ids as the candidate's run)."""
    committed = tree_entries(repo, base, options.baseline_file).get(options.baseline_file)
    if committed is not None and committed.mode in REGULAR:
        baseline.write_bytes(blob(repo, committed))
        log.say(f"gating against {options.baseline_file} of {options.base}")
        return
    previous = []
    for change in plan.adapters:
        written = materialise(repo, base, change, scratch / "previous")
        if written is not None:
            previous.append(written)
    if not previous:
        log.say(f"{options.base} has no {options.baseline_file} and none of these adapters: "
                "nothing to regress from (the checks' thresholds alone decide)")
        return
    log.say(f"{options.base} has no {options.baseline_file}: measuring its versions of the changed adapters")
    code = run_pytest(worktree, options.suites, previous,
                      ["--scenelora-baseline", str(baseline), "--scenelora-update-baseline",
                       *options.pytest_args], out=out, fence=github)
    if code not in (0, 1) or not baseline.is_file():
        baseline.unlink(missing_ok=True)
        log.say(f"could not measure the baseline (pytest exit code {code}): "
                "the checks' thresholds alone decide")


def _finish(log: _Log, environ: Mapping[str, str], failures: list[str], tested: list[str], plan: GatePlan,
            results: Path, base_name: str) -> GateResult:
    if failures:
        log.say(f"FAILED: {len(failures)} problem{'s' * (len(failures) != 1)} (above)")
    elif plan.adapters:
        log.say(f"passed: {len(tested)} adapter{'s' * (len(tested) != 1)} tested, "
                "no check failed or regressed")
    summary_path = environ.get("GITHUB_STEP_SUMMARY")
    if summary_path and in_github_actions(environ):
        try:
            with open(summary_path, "a", encoding="utf-8") as fh:
                fh.write(_summary(results, failures, plan, base_name))
        except OSError as exc:
            log.say(f"could not append to $GITHUB_STEP_SUMMARY {summary_path} ({exc.strerror or exc})")
    return GateResult(1 if failures else 0, failures, tested)


# --------------------------------------------------------------------------------- CLI


def add_gate_command(sub: argparse._SubParsersAction) -> None:
    gate = sub.add_parser(
        "gate", help="judge a pull request's changed adapters with the target branch's suites",
        description="Test the adapters that HEAD changed since it left BASE, with BASE's suites, "
                    "thresholds, tolerances and baseline; exit 1 when any check fails or regresses, "
                    "a changed adapter is a link, or a changed adapter was not tested.",
    )
    gate.add_argument("--base", required=True, metavar="REF", help="the target branch (e.g. origin/main)")
    gate.add_argument("--head", default="HEAD", metavar="REF",
                      help="the pull request's commit (default: HEAD)")
    gate.add_argument("--repo", type=Path, default=Path("."), metavar="DIR",
                      help="the repository (default: .)")
    gate.add_argument("--adapters", default="adapters", metavar="DIR",
                      help="where adapters live, relative to the repository (default: adapters)")
    gate.add_argument("--suites", default="suites", metavar="DIR",
                      help="the target branch's suites, relative to the repository (default: suites)")
    gate.add_argument("--baseline-file", default="scenelora-baseline.json", metavar="FILE",
                      help="the target branch's committed baseline (default: scenelora-baseline.json)")
    gate.add_argument("--out", type=Path, default=Path("scenelora-gate"), metavar="DIR",
                      help="where the results, the HTML report and the baseline used are written")
    gate.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                      help="extra pytest arguments, after --")
    gate.set_defaults(handler=cmd_gate)


def cmd_gate(args: argparse.Namespace) -> int:
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    options = GateOptions(repo=args.repo, base=args.base, head=args.head, adapters_dir=args.adapters,
                          suites=args.suites, baseline_file=args.baseline_file, out=args.out,
                          pytest_args=extra)
    return run_gate(options).code
