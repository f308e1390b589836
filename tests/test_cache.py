"""The result cache is shared by every pytest-xdist worker and must never refuse one, and
work the workers share (the register references' vectors) is split, not repeated.

A CI run under ``-n 2`` once failed with "database is locked": two workers opened a
fresh ``results.sqlite`` at the same moment, both asked SQLite to switch it to WAL mode,
and SQLite answers that race at once instead of waiting out its busy timeout.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from pytest_scenelora.cache import ResultCache
from pytest_scenelora.checks.runner import SHARED_CHUNK, embed_shared
from pytest_scenelora.scoring.embedders import CharNgramScorer

WORKERS = 8
ROUNDS = 50  # before the fix about one round in eight failed: fifty rounds catch it all but 0.1% of the time


def _open_and_write(path: Path, barrier, errors, worker: int) -> None:
    try:
        barrier.wait()
        cache = ResultCache(path)
        cache.put_generations({f"key-{worker}-{i}": f"text {i}" for i in range(5)})
        cache.put_generations({"shared": "the same value from every worker"})
        cache.close()
    except Exception as error:  # reported to the parent, which asserts on it
        errors.put(f"worker {worker}: {error!r}")


def test_workers_that_open_a_fresh_cache_at_once_all_get_in(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        path = tmp_path / f"round-{round_}" / "results.sqlite"
        path.parent.mkdir()
        barrier, errors = context.Barrier(WORKERS), context.Queue()
        workers = [context.Process(target=_open_and_write, args=(path, barrier, errors, w))
                   for w in range(WORKERS)]
        for process in workers:
            process.start()
        for process in workers:
            process.join(120)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        assert not failures, f"round {round_}: {failures}"
        assert [p.exitcode for p in workers] == [0] * WORKERS

        rows = ResultCache(path).get_generations(
            [f"key-{w}-{i}" for w in range(WORKERS) for i in range(5)] + ["shared"])
        assert len(rows) == WORKERS * 5 + 1
        # nothing of the temporary build is left beside the database
        assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_the_database_is_born_in_wal_mode_with_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    ResultCache(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"generations", "vectors", "arrays"}


def test_a_rollback_mode_database_from_an_older_release_is_converted_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE generations (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
        db.execute("INSERT INTO generations VALUES ('old', 'kept')")
    cache = ResultCache(path)
    assert cache.get_generations(["old"]) == {"old": "kept"}
    cache.put_array("logits", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert cache.get_array("logits").tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    cache.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class _CountingScorer(CharNgramScorer):
    """The n-gram scorer, noting in a file each text it really encodes (and taking its time,
    as a model would: 20 ms a text, so that two workers overlap)."""

    def __init__(self, cache: ResultCache, log: Path) -> None:
        super().__init__(cache=cache)
        self.log = log

    def _encode(self, texts: list[str]) -> np.ndarray:
        time.sleep(0.02 * len(texts))
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write("".join(f"{text}\n" for text in texts))
        return super()._encode(texts)


def _embed_as_worker(path: Path, log: Path, texts: list[str], barrier, worker: str, count: str) -> None:
    os.environ.update(PYTEST_XDIST_WORKER=worker, PYTEST_XDIST_WORKER_COUNT=count)
    barrier.wait()
    embed_shared(_CountingScorer(ResultCache(path), log), texts)


def test_xdist_workers_share_the_reference_embedding_instead_of_repeating_it(tmp_path: Path) -> None:
    texts = [f"reference text number {i} about the harbour" for i in range(6 * SHARED_CHUNK)]
    path = tmp_path / "results.sqlite"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    logs = [tmp_path / f"gw{w}.log" for w in range(2)]
    workers = [context.Process(target=_embed_as_worker, args=(path, logs[w], texts, barrier, f"gw{w}", "2"))
               for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0]
    done = [log.read_text(encoding="utf-8").splitlines() for log in logs]
    assert set(done[0]) | set(done[1]) == set(texts)
    for worker in done:  # each about half, never more than one chunk beyond it
        assert len(texts) // 2 - SHARED_CHUNK <= len(worker) <= len(texts) // 2 + SHARED_CHUNK, len(worker)
    # the cache holds what one process alone stores, vector for vector
    alone = tmp_path / "alone.sqlite"
    embed_shared(_CountingScorer(ResultCache(alone), tmp_path / "alone.log"), texts)
    assert len((tmp_path / "alone.log").read_text(encoding="utf-8").splitlines()) == len(texts)
    scorer = CharNgramScorer()
    shared = ResultCache(path).get_many(scorer.key, texts)
    single = ResultCache(alone).get_many(scorer.key, texts)
    assert all(np.array_equal(shared[t], single[t]) for t in texts)
