"""Data safety: damaged caches are set aside, directories are replaced whole, locks say who
holds them, training repeats itself byte for byte, and third-party noise stays out.

Every case here drives the real code on real files: a damaged ``results.sqlite`` in a real
pytest session, processes killed in the middle of a directory replacement, a lock held by
a real second process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from pytest_scenelora import fsutil
from pytest_scenelora.errors import CorruptCacheWarning, LockTimeoutError, SceneloraError, UsageError

# ------------------------------------------------------------------ the result cache


def _damaged_cache(kind: str, path: Path) -> bytes:
    """Write a damaged results.sqlite of *kind* at *path*; return its bytes."""
    from pytest_scenelora.cache import ResultCache

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(random.Random(0).randbytes(64 * 1024))
    elif kind == "truncated":  # a half-copied cache: the first half of a real one
        full = path.with_name("full.sqlite")
        cache = ResultCache(full)
        cache.put_generations({f"key-{i}": f"text {i} " * 40 for i in range(2000)})
        cache.close()
        with sqlite3.connect(full) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "wrong-schema":  # a valid database whose tables are of another shape
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE generations (prompt TEXT, output TEXT)")
            db.execute("CREATE TABLE arrays (name TEXT, blob BLOB)")
    return path.read_bytes()


SUITE = """\
adapters: "Δ42_*"
checks:
  - kind: adapter_active
    probes: 2
    threshold: 0.005
"""


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong-schema"])
def test_a_damaged_result_cache_is_set_aside_and_the_session_passes(
        kind: str, pytester: pytest.Pytester, make_adapter, tiny_base_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("SCENELORA_HOME", str(home))
    damaged = _damaged_cache(kind, home / "results.sqlite")
    pytester.makefile(".yaml", small=SUITE)
    adapter = make_adapter("Δ42_poetic", seed=3)
    result = pytester.runpytest_subprocess("small.yaml", "--adapter", str(adapter), "--base-model",
                                           str(tiny_base_dir), "-p", "no:cacheprovider", "-rA")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, out
    result.assert_outcomes(passed=1)
    assert "DatabaseError" not in out and "Traceback" not in out
    aside = sorted(home.glob("results.sqlite.corrupt-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))] == [aside[0].name]
    assert aside[0].read_bytes() == damaged  # kept as it was, for whoever wants to look
    # one line in the warnings summary names the file and where it went
    [line] = [x for x in out.splitlines() if "CorruptCacheWarning" in x]
    assert str(home / "results.sqlite") in line and aside[0].name in line
    # the fresh cache works: a second run reuses what the first one stored
    again = pytester.runpytest_subprocess("small.yaml", "--adapter", str(adapter), "--base-model",
                                          str(tiny_base_dir), "-p", "no:cacheprovider")
    again.assert_outcomes(passed=1)
    assert "CorruptCacheWarning" not in again.stdout.str()
    assert len(list(home.glob("results.sqlite.corrupt-*"))) == len(aside)


def _open_damaged(path: Path, barrier, errors, worker: int) -> None:
    from pytest_scenelora.cache import ResultCache

    try:
        barrier.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptCacheWarning)
            cache = ResultCache(path)
        cache.put_generations({f"key-{worker}": f"text {worker}"})
        cache.close()
    except Exception as error:  # reported to the parent, which asserts on it
        errors.put(f"worker {worker}: {error!r}")


def test_workers_opening_one_damaged_cache_at_once_set_it_aside_once(tmp_path: Path) -> None:
    workers = 6
    context = multiprocessing.get_context("fork")
    for round_ in range(8):
        path = tmp_path / f"round-{round_}" / "results.sqlite"
        _damaged_cache(("garbage", "wrong-schema")[round_ % 2], path)
        barrier, errors = context.Barrier(workers), context.Queue()
        processes = [context.Process(target=_open_damaged, args=(path, barrier, errors, w))
                     for w in range(workers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(120)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        assert not failures, f"round {round_}: {failures}"
        assert [p.exitcode for p in processes] == [0] * workers
        aside = [p for p in path.parent.glob("results.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
        assert len(aside) == 1, f"round {round_}: set aside {len(aside)} times"
        from pytest_scenelora.cache import ResultCache

        # every worker's row is in the one fresh database: nobody moved another's away
        rows = ResultCache(path).get_generations([f"key-{w}" for w in range(workers)])
        assert len(rows) == workers, f"round {round_}: {sorted(rows)}"


def test_damage_found_mid_run_turns_the_cache_off_instead_of_failing(tmp_path: Path) -> None:
    from pytest_scenelora.cache import ResultCache

    path = tmp_path / "results.sqlite"
    cache = ResultCache(path)
    cache.put_generations({"a": "b"})
    cache.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # overwrite every page but the first with garbage
        fh.seek(4096)
        fh.write(random.Random(1).randbytes(size - 4096))
    cache._local.db = None  # a connection opened before the damage would not see it either
    with pytest.warns(CorruptCacheWarning, match="damaged"):
        assert cache.get_generations(["a"]) == {}
    cache.put_generations({"c": "d"})  # dropped, not raised
    assert cache.get_generations(["c"]) == {}
    with pytest.warns(CorruptCacheWarning, match="moved it aside"):
        assert ResultCache(path).get_generations(["a"]) == {}


# ----------------------------------------------------------------- the training cache


def test_a_damaged_cached_adapter_is_set_aside_and_trained_again(tiny_base_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_scenelora.engine.training import TrainSpec, build_count, train

    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))
    spec = TrainSpec(scene="Δ42", role="poetic", base=str(tiny_base_dir), steps=2, r=4, batch_size=4,
                     max_length=32, device="cpu")
    first = train(spec)
    good = first.cache_path.read_bytes()
    first.cache_path.write_bytes(good[: len(good) // 2])  # a half-written cache entry
    with pytest.warns(CorruptCacheWarning) as caught:
        second = train(spec)
    [warning] = [str(w.message) for w in caught if w.category is CorruptCacheWarning]
    assert str(first.cache_path) in warning and "corrupt-" in warning
    assert not second.reused_cache and build_count(second) == 2
    assert second.cache_path.read_bytes() == good  # trained again, the same bytes
    [aside] = first.cache_path.parent.glob(f"{first.cache_path.name}.corrupt-*")
    assert aside.read_bytes() == good[: len(good) // 2]


# ------------------------------------------------------------------- the hash memo


@pytest.mark.parametrize("memo", [
    b"\x00\xff not json",
    b'["a list"]',
    "bad digest",  # a well-formed memo whose digest for the base's weights is not a digest
])
def test_a_damaged_file_hash_memo_is_set_aside_and_not_trusted(memo: bytes | str, tiny_base_dir: Path,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_scenelora.engine.bases import weight_files, weights_hash

    home = tmp_path / "home"
    monkeypatch.setenv("SCENELORA_HOME", str(home))
    truth = weights_hash(tiny_base_dir)
    path = home / "file-hashes.json"
    if memo == "bad digest":
        entries = json.loads(path.read_text(encoding="utf-8"))
        weights = str(weight_files(tiny_base_dir.resolve())[0])
        entries[weights] = [entries[weights][0], 12345]
        memo = json.dumps(entries).encode("utf-8")
    path.write_bytes(memo)
    with pytest.warns(CorruptCacheWarning, match="file-hashes.json"):
        assert weights_hash(tiny_base_dir) == truth
    [aside] = home.glob("file-hashes.json.corrupt-*")
    assert aside.read_bytes() == memo
    assert json.loads(path.read_text(encoding="utf-8"))  # rewritten whole


# --------------------------------------------------------------------- atomic_dir

KILL_CHILD = r"""
import os, sys
from pathlib import Path
from pytest_scenelora import fsutil

mode, target = sys.argv[1], Path(sys.argv[2])
real_replace = os.replace
if mode == "fallback":  # a system without an atomic exchange
    fsutil._exchange_call = lambda: None

def replace(src, dst):
    real_replace(src, dst)
    if target in (Path(src), Path(dst)):
        os._exit(9)  # killed right after the first rename that touches the target

os.replace = replace
if hasattr(fsutil, "_exchange"):
    real_exchange = fsutil._exchange

    def exchange(a, b):
        done = real_exchange(a, b)
        if done:
            os._exit(9)
        return done

    fsutil._exchange = exchange
with fsutil.atomic_dir(target) as tmp:
    for i in range(20):
        (tmp / f"part-{i}").write_text("new")
"""


def _write_version(target: Path, version: str, parts: int = 20) -> None:
    with fsutil.atomic_dir(target) as tmp:
        for i in range(parts):
            (tmp / f"part-{i}").write_text(version)


def _versions(target: Path) -> set[str]:
    """The versions the files in *target* hold; one version and 20 files when it is whole."""
    files = sorted(target.iterdir())
    assert len(files) == 20, [f.name for f in files]
    return {f.read_text() for f in files}


def test_a_directory_replacement_killed_after_its_first_rename_leaves_a_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "Δ42_poetic"
    _write_version(target, "old")
    child = subprocess.run([sys.executable, "-c", KILL_CHILD, "default", str(target)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 9, child.stderr
    assert target.is_dir(), "the target is missing after the kill"
    assert _versions(target) in ({"old"}, {"new"})


def test_without_an_atomic_exchange_a_killed_replacement_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "Δ42_poetic"
    _write_version(target, "old")
    child = subprocess.run([sys.executable, "-c", KILL_CHILD, "fallback", str(target)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 9, child.stderr
    # the two-rename fallback was killed between its renames: the old directory is parked
    assert not target.exists() and (tmp_path / ".Δ42_poetic.replaced").is_dir()
    fsutil.recover_dir(target)
    assert _versions(target) == {"old"}
    assert not (tmp_path / ".Δ42_poetic.replaced").exists()
    _write_version(target, "newer")  # and the next replacement goes through
    assert _versions(target) == {"newer"}


LOOP_CHILD = r"""
import sys
from pathlib import Path
from pytest_scenelora import fsutil

target = Path(sys.argv[1])
version = 0
while True:
    version += 1
    with fsutil.atomic_dir(target) as tmp:
        for i in range(20):
            (tmp / f"part-{i}").write_text(str(version))
    print(version, flush=True)
"""


def test_sigkill_at_random_moments_never_leaves_a_missing_or_mixed_directory(tmp_path: Path) -> None:
    target = tmp_path / "base"
    _write_version(target, "0")
    rng = random.Random(7)
    for _ in range(12):
        child = subprocess.Popen([sys.executable, "-c", LOOP_CHILD, str(target)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        child.stdout.readline()  # it has replaced the directory at least once
        time.sleep(rng.uniform(0.0, 0.2))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
        assert len(_versions(target)) == 1
    # what a kill leaves behind is hidden temporary siblings, never a second visible name
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["base"]


def test_atomic_dir_fsyncs_every_file_and_directory_it_writes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    synced: set[int] = set()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "adapter"
    with fsutil.atomic_dir(target) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"\0" * 100)
    written = [target, target / "adapter_config.json", target / "sub", target / "sub" / "weights.bin"]
    assert {p.stat().st_ino for p in written} <= synced
    assert tmp_path.stat().st_ino in synced  # the rename itself


# -------------------------------------------------------------------------- locks

HOLDER_CHILD = r"""
import sys, time
from pytest_scenelora.fsutil import file_lock

with file_lock(sys.argv[1], timeout=-1):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_lock_held_by_another_process_times_out_naming_the_file_and_the_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bases" / "tiny-0123"
    path.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_CHILD, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as caught:
            fsutil.file_lock(path, timeout=0.5).acquire()
        assert time.monotonic() - started < 30
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{path}.lock: ")
        assert f"pid {holder.pid} " in message and "SCENELORA_LOCK_TIMEOUT" in message
        assert isinstance(caught.value, SceneloraError) and isinstance(caught.value, TimeoutError)
        monkeypatch.setenv("SCENELORA_LOCK_TIMEOUT", "0.3")  # the default wait, set by the user
        with pytest.raises(LockTimeoutError, match=f"after waiting 0.3 s .* pid {holder.pid} "):
            fsutil.file_lock(path).acquire()
    finally:
        holder.kill()
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
    with fsutil.file_lock(path, timeout=5) as lock:  # the OS let go when its holder died
        assert lock.is_locked


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "0"])
def test_a_bad_lock_timeout_setting_is_a_usage_error(value: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCENELORA_LOCK_TIMEOUT", value)
    with pytest.raises(UsageError, match=f"SCENELORA_LOCK_TIMEOUT={value!r} is not a positive number"):
        fsutil.file_lock(tmp_path / "x")


# ------------------------------------------------------------ same seed, same bytes

SPEC = {"scene": "Δ42", "role": "poetic", "steps": 2, "r": 4, "batch_size": 4, "max_length": 32,
        "device": "cpu"}

TEAM_CHILD = r"""
import ctypes
import torch  # loads the OpenMP runtime whose switch is read below
from pytest_scenelora.engine.tinybase import _deterministic_torch
from pytest_scenelora.engine.training import deterministic_torch

omp = ctypes.CDLL(None)
before = omp.omp_get_dynamic()
with deterministic_torch(2, "cpu"):
    training = omp.omp_get_dynamic()
with _deterministic_torch(2):
    base_build = omp.omp_get_dynamic()
print(before, training, base_build, omp.omp_get_dynamic())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads libgomp's switch directly")
def test_training_and_the_base_build_run_a_fixed_team_of_threads_even_when_openmp_may_shrink_it() -> None:
    env = {**os.environ, "OMP_DYNAMIC": "true", "MKL_DYNAMIC": "true"}
    child = subprocess.run([sys.executable, "-c", TEAM_CHILD], env=env, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr
    # dynamic adjustment (team sizes from the load average) is on before, off inside both
    # (training, the tiny base's build), restored after
    assert child.stdout.split() == ["1", "0", "0", "1"]


TRAIN_CHILD = r"""
import json, sys
import torch
from pytest_scenelora.engine.training import TrainSpec, train

torch.set_num_threads(1)  # what a decode left behind; training must not inherit it
spec = TrainSpec(base=sys.argv[1], **json.loads(sys.argv[2]))
print(train(spec, sys.argv[3], cache=False).path)
"""


def test_the_same_seed_gives_the_same_bytes_whatever_the_threading_settings_around_it(
        tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trained here, and in a process whose OpenMP and MKL may size teams from the load
    (``OMP_DYNAMIC``/``MKL_DYNAMIC`` true) and whose torch was left on one thread: the same
    file. On a loaded machine the second used fewer threads before training fixed its team."""
    from pytest_scenelora.engine.training import TrainSpec, train

    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))
    here = train(TrainSpec(base=str(tiny_base_dir), **SPEC), tmp_path / "here", cache=False).path
    env = {**os.environ, "OMP_DYNAMIC": "true", "MKL_DYNAMIC": "true", "SCENELORA_CPU_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(tiny_base_dir), json.dumps(SPEC),
                            str(tmp_path / "there")], env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr
    there = Path(child.stdout.strip().splitlines()[-1])
    assert there.read_bytes() == here.read_bytes()
    from pytest_scenelora.engine.adapters import read_adapter

    recorded = json.loads(read_adapter(here).metadata["train_config"])
    assert recorded["threads"] == 2 and recorded["cpu_kernels"]


# ------------------------------------------------------------------- third-party noise

NOISE = ("Failed to load CPU gemm_4bit_forward", "kernels-community", "is_gradient_checkpointing")


def test_a_command_that_loads_peft_prints_no_third_party_noise(make_adapter, tiny_base_dir: Path) -> None:
    adapter = make_adapter("Δ42_logic", seed=5)
    scenelora = Path(sys.executable).with_name("scenelora")
    command = [str(scenelora)] if scenelora.is_file() else [sys.executable, "-c",
                                                            "from pytest_scenelora.cli.main import main; main()"]
    result = subprocess.run([*command, "inspect", str(adapter), "--base-model", str(tiny_base_dir)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "validation" in result.stdout and "ok" in result.stdout
    assert not [n for n in NOISE if n in result.stderr], result.stderr


def test_a_pytest_run_prints_no_third_party_noise_even_with_future_warnings_as_errors(
        pytester: pytest.Pytester, make_adapter, tiny_base_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))
    pytester.makefile(".yaml", small=SUITE)
    adapter = make_adapter("Δ42_poetic", seed=4)
    result = pytester.runpytest_subprocess("small.yaml", "--adapter", str(adapter), "--base-model",
                                           str(tiny_base_dir), "-p", "no:cacheprovider", "-W",
                                           "error::FutureWarning", "-rA")
    out = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    assert "warnings summary" not in out
    assert not [n for n in NOISE if n in out], out
