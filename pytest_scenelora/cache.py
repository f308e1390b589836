"""One SQLite cache for every expensive result, keyed by content hashes.

Generations are keyed by the base fingerprint, the adapter's content hash, the prompt,
the generation config, the seed and the sample index; vectors by the scorer's content
key and the text; arrays (the logits that two checks compare) by a hash of everything
that produced them. Never by a file path: renaming an adapter reuses its rows, changing
one byte of it does not. The database runs in WAL mode with a busy timeout, and every
write is an idempotent ``INSERT OR IGNORE`` in a short transaction, so pytest-xdist
workers share it safely: two workers that race to the same row write the same value.

The database is born complete: it is built (WAL mode, tables) in a temporary file and
hard-linked into place, so no worker ever opens a half-made one or has to switch a fresh
file to WAL while another holds it (SQLite answers that race with an immediate "database
is locked", not with its busy timeout).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CorruptCacheWarning
from .fsutil import cache_home, canonical_json, file_lock, set_aside, sha256_bytes, warn_user

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    scorer TEXT NOT NULL, text_key TEXT NOT NULL, dim INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (scorer, text_key)
);
CREATE TABLE IF NOT EXISTS arrays (key TEXT PRIMARY KEY, meta TEXT NOT NULL, data BLOB NOT NULL);
"""

#: The columns this code reads and writes, per table (a database may lack a table: it
#: is then created, as for a database from an older release).
COLUMNS = {
    "generations": ("key", "text"),
    "vectors": ("scorer", "text_key", "dim", "data"),
    "arrays": ("key", "meta", "data"),
}


def generation_key(*, base: str, adapter: str, prompt: str, config: str, seed: int, index: int) -> str:
    """The identity of one generated sample (all arguments are content hashes or values)."""
    return sha256_bytes(canonical_json({"base": base, "adapter": adapter, "prompt": prompt,
                                        "config": config, "seed": seed, "index": index}))


def text_key(text: str) -> str:
    return sha256_bytes(text)


class ResultCache:
    """The SQLite cache. Cheap to open; one connection per thread."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else cache_home() / "results.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.hits = 0
        self.misses = 0
        #: set when the database turned out damaged mid-run: the rest of the run goes without
        self.broken: str | None = None
        with file_lock(self.path):
            _create(self.path)
            problem = diagnose(self.path)
            if problem is not None:
                set_aside(self.path, problem, companions=("-wal", "-shm"))
                _create(self.path)
        db = self._connect()
        _retry_busy(lambda: db.executescript(SCHEMA))  # a database from an older release

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            _retry_busy(lambda: _set_up(db))
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------------ generations
    def get_generations(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.broken is None:
            with self._noting_damage():
                self._read_generations(keys, found)
        self.hits += sum(k in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        return found

    def _read_generations(self, keys: Sequence[str], found: dict[str, str]) -> None:
        db = self._connect()
        for chunk in _chunks(list(dict.fromkeys(keys)), 500):
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(
                f"SELECT key, text FROM generations WHERE key IN ({marks})", chunk).fetchall())

    def put_generations(self, rows: Mapping[str, str]) -> None:
        self._write("INSERT OR IGNORE INTO generations (key, text) VALUES (?, ?)", rows.items())

    # ---------------------------------------------------------------------- vectors
    def get_many(self, scorer_key: str, texts: Sequence[str]) -> dict[str, Any]:
        import numpy as np

        by_key = {text_key(t): t for t in texts}
        found: dict[str, Any] = {}
        if self.broken is not None:
            return found
        with self._noting_damage():
            db = self._connect()
            for chunk in _chunks(list(by_key), 500):
                marks = ",".join("?" * len(chunk))
                for key, dim, data in db.execute(
                    f"SELECT text_key, dim, data FROM vectors WHERE scorer = ? AND text_key IN ({marks})",
                    [scorer_key, *chunk],
                ):
                    found[by_key[key]] = np.frombuffer(data, dtype=np.float32, count=dim).copy()
        return found

    def put_many(self, scorer_key: str, vectors: Mapping[str, Any]) -> None:
        import numpy as np

        rows = []
        for text, vec in vectors.items():
            arr = np.asarray(vec, dtype=np.float32)
            rows.append((scorer_key, text_key(text), int(arr.size), arr.tobytes()))
        self._write("INSERT OR IGNORE INTO vectors (scorer, text_key, dim, data) VALUES (?, ?, ?, ?)",
                    rows)

    # ----------------------------------------------------------------------- arrays
    def get_array(self, key: str) -> Any:
        """The numpy array stored under *key*, or None."""
        import json

        import numpy as np

        if self.broken is not None:
            return None
        row = None
        with self._noting_damage():
            row = self._connect().execute("SELECT meta, data FROM arrays WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        meta = json.loads(row[0])
        return np.frombuffer(row[1], dtype=meta["dtype"]).reshape(meta["shape"]).copy()

    def put_array(self, key: str, array: Any) -> None:
        import numpy as np

        arr = np.ascontiguousarray(array)
        meta = canonical_json({"dtype": arr.dtype.str, "shape": list(arr.shape)})
        self._write("INSERT OR IGNORE INTO arrays (key, meta, data) VALUES (?, ?, ?)",
                    [(key, meta, arr.tobytes())])

    def _write(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows or self.broken is not None:
            return
        with self._noting_damage():
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(sql, rows)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _noting_damage(self) -> Iterator[None]:
        """Run a read or write; if it finds the database damaged, go on without the cache.

        SQLite reports damage (a page that does not parse) as a plain ``DatabaseError``;
        its ``OperationalError`` subclass (locked, busy, disk full) is not damage and
        goes up as it is. Reads then miss and writes are dropped: the run computes
        what it needs, and the next open sets the file aside.
        """
        try:
            yield
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as error:
            self.broken = str(error)
            warn_user(f"{self.path}: the result cache is damaged ({error}); this run goes on "
                      "without it, and the next run sets it aside", CorruptCacheWarning)


BUSY_TIMEOUT_S = 60.0


def _create(path: Path) -> None:
    """Put a complete WAL-mode database at *path* unless one is there; never replace one."""
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()
        # A hard link creates the name only if it is free: the first worker's database
        # wins and nobody's open database is swapped out from under it. Where it fails
        # (another worker won, or the filesystem has no hard links) the name is left as
        # it is: SQLite then opens or creates that file and _set_up switches it to WAL,
        # retried while another worker holds it.
        with contextlib.suppress(OSError):
            os.link(tmp, path)
    finally:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def diagnose(path: Path) -> str | None:
    """What makes the database at *path* unusable, in a few words, or None when it is fine.

    Not a database, damaged pages (``quick_check`` reads every page, so a truncated file
    is found too) and our tables with other columns are reported; a missing table is
    not (the schema creates it). Locked or busy is waited out; other operational errors
    (permissions, a full disk) are not the file's fault and are raised.
    """
    if not path.exists():
        return None
    found: list[str] = []

    def check() -> None:
        found.clear()
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            result = db.execute("PRAGMA quick_check").fetchall()
            if [tuple(r) for r in result] != [("ok",)]:
                found.append(f"the database is damaged ({result[0][0]})")
                return
            for table, columns in COLUMNS.items():
                info = db.execute(f"PRAGMA table_info({table})").fetchall()
                if not info:
                    continue
                have = {row[1]: row for row in info}
                missing = [c for c in columns if c not in have]
                # a column we do not write must accept our INSERTs: nullable, or with a default
                stuck = [name for name, row in have.items()
                         if name not in columns and row[3] and row[4] is None]
                if missing or stuck:
                    found.append(f"its table {table!r} has columns ({', '.join(have)}), "
                                 f"not ({', '.join(columns)}): it was not written by scenelora")
                    return
        finally:
            db.close()

    try:
        _retry_busy(check)
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as error:
        return f"not a usable SQLite database ({error})"
    return found[0] if found else None


def _set_up(db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")


def _retry_busy(step: Callable[[], object], deadline_s: float = BUSY_TIMEOUT_S) -> None:
    """Run *step*, retrying while SQLite reports the database busy or locked.

    SQLite skips its busy handler where waiting could deadlock (a lock upgrade, WAL
    recovery), so those cases come back at once and are retried here with backoff.
    """
    give_up = time.monotonic() + deadline_s
    pause = 0.01
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as error:
            message = str(error).lower()
            if ("locked" not in message and "busy" not in message) or time.monotonic() > give_up:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
