"""What a pull request changed, read from Git alone: the adapter files it adds or modifies
(:func:`changed_adapters`), and those files written out as fresh regular files from their
blobs (:func:`materialise`). Nothing is checked out from the pull request and no link is
followed: a symbolic link or a submodule where an adapter should be is refused.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..engine.adapters import PEFT_CONFIG, SUFFIX, adapter_name
from ..errors import UsageError

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


def relative_parts(path: str) -> tuple[str, ...]:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"{path}: not a plain path inside the repository; the gate will not write it")
    return parts


def blob(repo: Path, entry: TreeEntry) -> bytes:
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
    dest = dest_root.joinpath(*relative_parts(entry.path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob(repo, entry))
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
        return dest_root.joinpath(*relative_parts(change.path))
    entry = tree.get(change.path)
    if entry is None or entry.mode not in REGULAR:
        return None
    return write_blob(repo, entry, dest_root)
