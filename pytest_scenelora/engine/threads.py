"""How many CPU threads each kind of work uses, and thread teams that stay that size.

The policy: a decode on a small model runs on one thread (:func:`cpu_threads`), a batch
of sentence encodings on this process's share of the cores (:func:`encoder_threads`),
``SCENELORA_CPU_THREADS`` overrides both, and :func:`cpu_thread_limit` applies a count
for the length of a block.

``torch.set_num_threads`` sets the most threads, not the number used: with OpenMP's
dynamic adjustment on (``OMP_DYNAMIC=true``; libgomp then sizes each team from the
system's load average) or MKL's (``MKL_DYNAMIC``, on unless set false), a loaded machine
runs some kernels on fewer threads, reductions are split differently, and the same seed
gives other bytes. Work that promises "same seed, same bytes" (training, the tiny base's
build) runs inside :func:`fixed_team_size`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def fixed_team_size() -> Iterator[None]:
    """OpenMP's and MKL's dynamic thread counts off inside the block, where torch has them.

    Both are C switches with no torch API: ``omp_set_dynamic`` of the OpenMP runtime
    torch loaded, and MKL's ``MKL_Set_Dynamic`` exported by torch's CPU library when it
    bundles MKL. Where neither is found the block runs as it is (the promise then also
    depends on ``OMP_DYNAMIC``/``MKL_DYNAMIC`` being unset or false).
    """
    omp_get, omp_set, mkl_set = threading_switches()
    omp_before = omp_get() if omp_get is not None else None
    mkl_before = os.environ.get("MKL_DYNAMIC", "true").strip().lower() not in ("false", "0", "no")
    if omp_set is not None:
        omp_set(0)
    if mkl_set is not None:
        mkl_set(0)
    try:
        yield
    finally:
        if omp_set is not None and omp_before is not None:
            omp_set(omp_before)
        if mkl_set is not None:
            mkl_set(int(mkl_before))  # MKL has no getter: its setting came from MKL_DYNAMIC


@functools.cache
def threading_switches() -> tuple[Any, Any, Any]:
    """(omp_get_dynamic, omp_set_dynamic, MKL_Set_Dynamic) as C functions, each or None."""
    import ctypes

    import torch

    def find(library: Any, name: str) -> Any:
        try:
            function = getattr(library, name)
        except AttributeError:
            return None
        function.restype = ctypes.c_int
        if name.endswith("set_dynamic") or name.endswith("Set_Dynamic"):
            function.argtypes = [ctypes.c_int]
        return function

    try:
        loaded = ctypes.CDLL(None)  # the process's symbols: torch's OpenMP runtime is among them
    except (OSError, TypeError):  # Windows has no such handle
        return None, None, None
    mkl_set = None
    torch_cpu = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if torch.backends.mkl.is_available() and torch_cpu.is_file():
        with contextlib.suppress(OSError):
            mkl_set = find(ctypes.CDLL(str(torch_cpu)), "MKL_Set_Dynamic")
    return find(loaded, "omp_get_dynamic"), find(loaded, "omp_set_dynamic"), mkl_set


def cpu_threads(model: Any) -> int | None:
    """How many intra-op threads a decode on *model* should use on CPU (None: leave torch's).

    A small model's ops take microseconds, so fanning each one out to OpenMP threads
    costs more than it saves, and when the cores are shared (CI runners, xdist workers)
    threads wait on each other: on a loaded machine one thread decodes the tiny base
    several times faster than two, with identical text. Models of width 1024 and up keep
    torch's default. ``SCENELORA_CPU_THREADS`` overrides both.
    """
    explicit = _threads_asked()
    if explicit:
        return explicit
    config = getattr(model, "config", None)
    width = getattr(config, "hidden_size", None)
    if width is None and hasattr(model, "get_base_model"):
        width = getattr(getattr(model.get_base_model(), "config", None), "hidden_size", None)
    return 1 if isinstance(width, int) and width < 1024 else None


def encoder_threads() -> int:
    """How many intra-op threads a sentence encoder's batches should use on CPU.

    Unlike a decode step, a batch of 64 texts is big enough to split across idle cores, but
    a thread on a core that another part of this run keeps busy slows the batch down rather
    than speeding it up. So: the cores this process may run on, shared evenly among
    pytest-xdist's workers. ``SCENELORA_CPU_THREADS`` overrides.
    """
    from ..workers import cores, worker_count

    return _threads_asked() or max(1, cores() // worker_count())


def _threads_asked() -> int | None:
    """The thread count ``SCENELORA_CPU_THREADS`` asks for (None: not set or empty).

    Anything but a whole number from 1 to 1024 is a :class:`UsageError` naming the
    variable, rather than a ``ValueError`` from ``int()`` (or torch's overflow) deep in a
    decode.
    """
    import os

    from ..errors import UsageError

    explicit = os.environ.get("SCENELORA_CPU_THREADS", "").strip()
    if not explicit:
        return None
    if not explicit.isascii() or not explicit.isdigit() or not 1 <= int(explicit) <= 1024:
        raise UsageError(f"SCENELORA_CPU_THREADS={explicit[:40]!r} is not a thread count; set it to a "
                         "whole number from 1 to 1024, or unset it to let scenelora choose")
    return int(explicit)


@contextlib.contextmanager
def cpu_thread_limit(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to *count* inside the block (None: unchanged)."""
    import torch

    if count is None or count == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
