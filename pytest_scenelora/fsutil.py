"""Atomic writes, file locks and content hashes: the durability rules of the house.

Every file this package writes goes through :func:`atomic_path` or :func:`atomic_dir`:
a temporary sibling is written, flushed, and renamed into place, so a crash or Ctrl-C
never leaves a half-written file where a reader would find it, and concurrent writers
(pytest-xdist workers) each rename a complete file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from .errors import CorruptCacheWarning, LockTimeoutError, UsageError

_CHUNK = 1 << 20


def cache_home() -> Path:
    """Root of every cache: ``$SCENELORA_HOME``, else ``$XDG_CACHE_HOME/scenelora``."""
    explicit = os.environ.get("SCENELORA_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "scenelora"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        # length-prefix each part so ("ab", "c") and ("a", "bc") hash differently
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside *target*; rename it over *target* on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed and
    *target* is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def _fsync_tree(root: Path) -> None:
    """fsync every file under *root*, then every directory, deepest first.

    A rename is durable only once the data it points at is: without this, a power cut
    just after the rename can leave the new name pointing at empty or partial files.
    """
    flags = os.O_RDWR if os.name == "nt" else os.O_RDONLY  # Windows fsyncs writable handles only
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


#: Linux's renameat2(2) flag that swaps two existing paths in one step.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _exchange_call() -> Callable[[bytes, bytes], int] | None:
    """libc's renameat2 with RENAME_EXCHANGE bound in, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no glibc 2.28+ / musl 1.2.2+: the fallback serves
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int

    def call(a: bytes, b: bytes) -> int:
        if renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) == 0:
            return 0
        return ctypes.get_errno()

    return call


def _exchange(a: Path, b: Path) -> bool:
    """Swap what the paths *a* and *b* name, in one step; False where the system cannot."""
    call = _exchange_call()
    if call is None:
        return False
    err = call(os.fsencode(a), os.fsencode(b))
    if err == 0:
        return True
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a filesystem (or kernel) without the exchange flag
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _backup_of(target: Path) -> Path:
    return target.parent / f".{target.name}.replaced"


def recover_dir(target: Path) -> None:
    """Finish a directory replacement that a killed process left half done.

    Only the fallback of :func:`atomic_dir` (a system without an atomic exchange) can
    leave one: the old directory parked under ``.<name>.replaced`` and *target* missing
    (restored here), or the new one in place and the old still parked (removed here).
    """
    target = Path(target)
    backup = _backup_of(target)
    if not os.path.lexists(backup):
        return
    with file_lock(backup):
        if not os.path.lexists(backup):
            return  # another process finished it
        if os.path.lexists(target):
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(backup, target)
            _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside *target*; put it in place, whole, on success.

    Readers (PEFT, transformers, this package) open the directory by its plain name, so
    the name must always hold a complete directory: the old one or the new one. The new
    directory's files and folders are fsynced first, then:

    * no *target* yet: one ``rename`` puts it in place;
    * an existing *target* on Linux: ``renameat2(RENAME_EXCHANGE)`` swaps the two in one
      step, and the old one (now under the temporary name) is deleted. A kill at any
      point leaves the old or the new directory at *target*, at worst with a hidden
      ``.<name>.*.tmp`` sibling to delete. No symlink is involved, so the folder stays a
      plain folder that git, zip and the Hub copy as it is;
    * elsewhere (no exchange call, or a filesystem without it): the old directory is
      parked under the fixed name ``.<name>.replaced``, the new one renamed in, the old
      one deleted, under a lock beside it. A kill between the two renames leaves
      *target* missing and the old directory parked; :func:`recover_dir` puts it back,
      and every later :func:`atomic_dir` on the same target calls it first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give what mkdir() would
        _fsync_tree(tmp)
        _put_dir_in_place(tmp, target)
        _fsync_dir(target.parent)
    finally:
        # after an exchange *tmp* holds the old directory; after a failure, the partial new one
        shutil.rmtree(tmp, ignore_errors=True)


def _put_dir_in_place(new: Path, target: Path) -> None:
    if not os.path.lexists(target):
        try:
            os.replace(new, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # another writer put one there first: replace it as below
    if _exchange(new, target):
        return
    backup = _backup_of(target)
    with file_lock(backup):
        if os.path.lexists(backup):  # a killed replacement of this target, not yet recovered
            if os.path.lexists(target):
                shutil.rmtree(backup)
            else:
                os.replace(backup, target)
        if os.path.lexists(target):
            os.replace(target, backup)
        os.replace(new, target)
        _fsync_dir(target.parent)
        shutil.rmtree(backup, ignore_errors=True)


#: How long a process waits for a lock another one holds before giving up, unless
#: ``SCENELORA_LOCK_TIMEOUT`` says otherwise. Locks guard work done once for everyone
#: (building the tiny base, training an adapter), which can legitimately take a while;
#: a wait this long means the holder is stuck, or slower than anyone should wait for
#: without being told.
DEFAULT_LOCK_TIMEOUT_S = 3600.0


def lock_timeout() -> float:
    """Seconds to wait for a lock: ``$SCENELORA_LOCK_TIMEOUT``, else the default."""
    raw = os.environ.get("SCENELORA_LOCK_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"SCENELORA_LOCK_TIMEOUT={raw[:40]!r} is not a positive number of seconds; "
                         f"set it like SCENELORA_LOCK_TIMEOUT=600, or unset it for "
                         f"{DEFAULT_LOCK_TIMEOUT_S:.0f}")
    return value


class HeldFileLock:
    """A :class:`filelock.FileLock` that says who holds it, and names them when it times out.

    The holder writes ``{"pid", "host", "since"}`` to ``<lock>.holder`` once it has the
    lock and deletes it before letting go, so a process that gives up waiting can say
    which process to look at. The lock itself is the OS's (released when its holder
    dies); the holder file is information only, and may be stale or missing.
    """

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.lock_path = Path(f"{path}.lock")
        self.holder_path = Path(f"{path}.lock.holder")
        self.timeout = lock_timeout() if timeout is None else timeout
        self._lock = FileLock(str(self.lock_path), timeout=self.timeout)

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> None:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise LockTimeoutError(self.timeout_message()) from None
        with contextlib.suppress(OSError):
            record = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
            atomic_write_text(self.holder_path, canonical_json(record))

    def release(self) -> None:
        try:
            with contextlib.suppress(OSError):
                self.holder_path.unlink()
        finally:
            self._lock.release()

    def __enter__(self) -> HeldFileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def holder(self) -> str | None:
        """Who holds the lock, as the holder recorded it, or None when it did not say."""
        try:
            record = json.loads(self.holder_path.read_text(encoding="utf-8"))
            pid, host, since = int(record["pid"]), str(record["host"]), float(record["since"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        text = f"pid {pid} on host {host!r} since {started}"
        if host == socket.gethostname() and not _process_alive(pid):
            text += " (no longer running: whoever holds it now did not record itself)"
        return text

    def timeout_message(self) -> str:
        holder = self.holder() or "another process (it did not record which)"
        return (f"{self.lock_path}: gave up after waiting {self.timeout:g} s for this lock, held by "
                f"{holder}; let that process finish or stop it, or set SCENELORA_LOCK_TIMEOUT "
                "to wait longer")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but is someone else's, or this platform cannot tell
    return True


def file_lock(path: Path, timeout: float | None = None) -> HeldFileLock:
    """A lock file beside *path*, for work that two processes must not do twice.

    *timeout* is in seconds (None: :func:`lock_timeout`; -1: wait forever). A wait that
    runs out raises :class:`~pytest_scenelora.errors.LockTimeoutError` naming the lock
    file and the process that holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return HeldFileLock(path, timeout)


# ------------------------------------------------------------------------ corrupt files


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Tell the user something was wrong and has been recovered from, without failing the run.

    A warning reaches pytest's warnings summary, or a command's terminal. Where a
    ``-W error`` filter turns it into an exception it is printed to stderr instead:
    what it reports has been recovered from, so it must not fail the run.
    """
    try:
        warnings.warn(message, category, stacklevel=3)
    except Warning:
        print(f"scenelora: warning: {message}", file=sys.stderr)


def set_aside(path: Path, problem: str, companions: Iterable[str] = ()) -> Path:
    """Rename the unusable file *path* to ``<name>.corrupt-<UTC time>`` and warn, in one line.

    *companions* are suffixes of files that belong to it (SQLite's ``-wal``, ``-shm``):
    they move with it, to the new name plus the suffix, so the copy set aside can still
    be opened and inspected. Call it holding *path*'s :func:`file_lock`, after checking
    again that the file is still bad (a concurrent process may have replaced it). The
    companions move first, so no fresh file created at *path* meanwhile loses its own.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(os.path.lexists(f"{aside}{suffix}") for suffix in ("", *companions)):
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in companions:
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    os.replace(path, aside)
    _fsync_dir(path.parent)
    warn_user(f"{path}: {problem}; moved it aside to {aside.name} and went on with a fresh one",
              CorruptCacheWarning)
    return aside


def hash_files(paths: Iterable[Path], root: Path) -> str:
    """sha256 over the relative names and bytes of *paths*, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        h.update(sha256_file(path).encode("ascii"))
    return h.hexdigest()
