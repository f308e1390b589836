"""Content hashes of large files (base weights, GGUF files), remembered across runs.

A 7B base or a GGUF is hundreds of megabytes to read; its sha256 is kept in
``<cache home>/file-hashes.json`` by path, size and mtime, and read again only when one
of those changes. A damaged memo is set aside and rebuilt, never trusted in part.
"""

from __future__ import annotations

import json
from pathlib import Path


def file_sha256s(paths: list[Path]) -> list[str]:
    """The sha256 of each file, remembered in ``<cache home>/file-hashes.json`` by path,
    size and mtime, so a large file (a 7B base, a GGUF) is read once."""
    from ..fsutil import atomic_path, cache_home, sha256_file

    memo_path = cache_home() / "file-hashes.json"
    memo = _read_hash_memo(memo_path)
    changed = False
    digests = []
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        entry = memo.get(str(path))
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp):
            entry = [stamp, sha256_file(path)]
            memo[str(path)] = entry
            changed = True
        digests.append(entry[1])
    if changed:
        with atomic_path(memo_path) as tmp:  # a racing writer loses at most a memo entry
            tmp.write_text(json.dumps(memo, sort_keys=True), encoding="utf-8")
    return digests


def file_sha256(path: Path) -> str:
    """One file's sha256 through the memo of :func:`file_sha256s`."""
    return file_sha256s([path])[0]


def _read_hash_memo(memo_path: Path) -> dict[str, list[str]]:
    """The ``file-hashes.json`` memo, or an empty one; a damaged memo is set aside.

    A memo entry that is not ``[stamp, sha256]`` would feed garbage into every content
    hash built on it, so the memo is trusted only whole: otherwise it is renamed
    ``file-hashes.json.corrupt-<time>`` (under its lock, checked again there, since a
    concurrent process may have just rewritten it), a warning says so, and the digests
    are recomputed.
    """
    from ..fsutil import file_lock, set_aside

    def parse(raw: bytes) -> tuple[dict[str, list[str]], str | None]:
        try:
            memo = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return {}, f"not valid JSON ({str(exc)[:100]})"
        if not isinstance(memo, dict):
            return {}, f"holds a JSON {type(memo).__name__}, not an object"
        for key, entry in memo.items():
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                    and isinstance(entry[1], str) and len(entry[1]) == 64
                    and all(c in "0123456789abcdef" for c in entry[1])):
                return {}, f"its entry for {key[:200]!r} is not [stamp, sha256 digest]"
        return memo, None

    def read() -> bytes | None:
        try:
            return memo_path.read_bytes()
        except OSError:  # none yet, or one this user cannot read: digests are recomputed
            return None

    raw = read()
    if raw is None:
        return {}
    memo, problem = parse(raw)
    if problem is None:
        return memo
    with file_lock(memo_path):
        raw = read()
        if raw is None:
            return {}
        memo, problem = parse(raw)
        if problem is not None:
            set_aside(memo_path, problem)
    return memo
