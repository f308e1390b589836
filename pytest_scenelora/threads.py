"""CPU thread teams that stay the size they were asked to be.

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
