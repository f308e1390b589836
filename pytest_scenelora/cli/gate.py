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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from ..engine.adapters import PEFT_CONFIG, SUFFIX, adapter_name
from ..errors import UsageError
from ..reporting.github import (
    annotations,
    escape_data,
    escape_log,
    escape_markdown,
    in_github_actions,
    step_summary,
)

__all__ = ["AdapterChange", "GatePlan", "add_gate_command", "changed_adapters", "run_gate"]

REGULAR = ("100644", "100755")
SYMLINK = "120000"
SUBMODULE = "160000"
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\n"


# ------------------------------------------------------------------------------- git


def git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """``git -C repo args`` with its output as bytes; a failure is one line naming the command.

    Pathspecs are literal (a name with ``*`` is that name) and no pager or colour applies.
    """
    command = ["git", "-C", os.fspath(repo), "--literal-pathspecs", "--no-pager", *args]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise UsageError("the gate needs git on PATH, and there is none") from exc
    if done.returncode != 0:
        why = os.fsdecode(done.stderr).strip().splitlines()
        raise UsageError(f"git {' '.join(args[:3])} failed in {repo}: "
                         f"{why[-1] if why else f'exit {done.returncode}'}")
    return done.stdout


def commit_of(repo: Path, ref: str) -> str:
    """The commit *ref* names, as a full hash (so later steps cannot be moved by a ref update)."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
                   ).decode().strip()
    except UsageError:
        raise UsageError(f"{ref!r} names no commit in {repo}: fetch it first "
                         "(the workflow checks out with fetch-depth: 0)") from None


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    object: str
    path: str  # relative to the repository root, '/'-separated (os.fsdecode of git's bytes)


def tree_entries(repo: Path, commit: str, under: str) -> dict[str, TreeEntry]:
    """Every file, link and submodule of *commit* at or below *under*, by path."""
    raw = git(repo, "ls-tree", "-r", "-z", "--full-tree", commit, "--", under)
    found = {}
    for item in raw.split(b"\0"):
        if not item:
            continue
        meta, _, name = item.partition(b"\t")
        mode, _kind, obj = meta.decode().split(" ")
        path = os.fsdecode(name)
        found[path] = TreeEntry(mode, obj, path)
    return found


def changed_paths(repo: Path, base: str, head: str, under: str) -> list[tuple[str, str, str]]:
    """(status, new mode, path) for each path below *under* that *head* changed since it left
    *base*: the merge base against *head*, every status (type changes ``T`` included, renames
    as a deletion and an addition), recursively."""
    fork = git(repo, "merge-base", base, head).decode().strip()
    raw = git(repo, "diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", fork, head, "--", under)
    fields = raw.split(b"\0")
    out = []
    for meta, name in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(b":"):
            continue
        _old_mode, new_mode, _old, _new, status = meta[1:].decode().split(" ")
        out.append((status[:1], new_mode, os.fsdecode(name)))
    return out


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class AdapterChange:
    """One adapter the pull request changed: a single file or a PEFT folder."""

    path: str  # repository path of the file or folder
    folder: bool

    @property
    def name(self) -> str:
        """The name the plugin gives it (file stem or folder name, NFC)."""
        return adapter_name(Path(self.path))


@dataclass
class GatePlan:
    adapters: list[AdapterChange] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # changed files that belong to no adapter


def _folder_adapter(path: str, tree: Mapping[str, TreeEntry], root: str) -> str | None:
    """The PEFT folder (a folder with an ``adapter_config.json``) that holds *path*, if any."""
    parent = PurePosixPath(path).parent
    top = PurePosixPath(root)
    while True:
        if str(parent / PEFT_CONFIG) in tree:
            return str(parent)
        if parent == top or parent == parent.parent or top not in parent.parents:
            return None
        parent = parent.parent


def changed_adapters(repo: Path, base: str, head: str, adapters_dir: str) -> GatePlan:
    """What the gate must test: each changed adapter once, and what it refuses.

    A symbolic link or a submodule anywhere among the changed paths (or inside a changed
    PEFT folder) is refused: the gate would test whatever it points at, or nothing.
    """
    plan = GatePlan()
    tree = tree_entries(repo, head, adapters_dir)
    chosen: dict[str, AdapterChange] = {}
    refused: set[str] = set()
    for status, mode, path in changed_paths(repo, base, head, adapters_dir):
        if status != "D" and mode in (SYMLINK, SUBMODULE):
            refused.add(path)
        if status != "D" and mode == SYMLINK:
            plan.refused.append(f"{path}: is a symbolic link in the pull request; the gate tests "
                                "adapter files, never what a link points at: commit the file itself")
            continue
        if status != "D" and mode == SUBMODULE:
            plan.refused.append(f"{path}: is a submodule in the pull request; commit the adapter "
                                "files themselves")
            continue
        folder = _folder_adapter(path, tree, adapters_dir)
        if folder is not None:
            chosen.setdefault(folder, AdapterChange(folder, folder=True))
        elif status == "D":
            plan.deleted.append(path)
        elif path.endswith(SUFFIX):
            chosen.setdefault(path, AdapterChange(path, folder=False))
        else:
            plan.other.append(path)
    for change in chosen.values():
        if change.folder:
            for entry in tree.values():
                if entry.path.startswith(change.path + "/") and entry.mode not in REGULAR \
                        and entry.path not in refused:
                    what = "a symbolic link" if entry.mode == SYMLINK else "not a regular file"
                    plan.refused.append(f"{entry.path}: is {what} inside the adapter folder {change.path}; "
                                        "the gate reads regular files only: commit the file itself")
    plan.adapters = sorted(chosen.values(), key=lambda c: c.path)
    return plan


# -------------------------------------------------------------------- materialising


def _relative_parts(path: str) -> tuple[str, ...]:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"{path}: not a plain path inside the repository; the gate will not write it")
    return parts


def _blob(repo: Path, entry: TreeEntry) -> bytes:
    """The file's bytes as committed: a Git LFS pointer is resolved through ``git lfs smudge``
    (which reads the object store, never the work tree)."""
    data = git(repo, "cat-file", "blob", entry.object)
    if data.startswith(LFS_POINTER) and len(data) < 1024:
        try:
            data = git(repo, "lfs", "smudge", "--", entry.path, stdin=data)
        except UsageError as exc:
            raise UsageError(f"{entry.path}: a Git LFS pointer whose content is not here ({exc}); "
                             "run `git lfs fetch origin <commit>` for the pull request first") from None
    return data


def write_blob(repo: Path, entry: TreeEntry, dest_root: Path) -> Path:
    """Write one committed file under *dest_root* (a fresh folder of the gate's own) as a new
    regular file: ``O_EXCL | O_NOFOLLOW``, so nothing already there is written through."""
    dest = dest_root.joinpath(*_relative_parts(entry.path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(_blob(repo, entry))
    return dest


def materialise(repo: Path, commit: str, change: AdapterChange, dest_root: Path) -> Path | None:
    """*change* as it is in *commit*, written under *dest_root*; None where it is not there
    (a new adapter has no previous version) or is no regular file (the target branch's own
    link is not followed either)."""
    tree = tree_entries(repo, commit, change.path)
    if change.folder:
        members = [e for e in tree.values() if e.path.startswith(change.path + "/")]
        if not any(e.path == f"{change.path}/{PEFT_CONFIG}" for e in members) or \
                any(e.mode not in REGULAR for e in members):
            return None
        for entry in members:
            write_blob(repo, entry, dest_root)
        return dest_root.joinpath(*_relative_parts(change.path))
    entry = tree.get(change.path)
    if entry is None or entry.mode not in REGULAR:
        return None
    return write_blob(repo, entry, dest_root)


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
            _relative_parts(value)
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
        baseline.write_bytes(_blob(repo, committed))
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
