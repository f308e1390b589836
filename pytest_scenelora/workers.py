"""Where this process stands among the run's pytest-xdist workers (cheap: environment only).

pytest-xdist tells each worker its name (``PYTEST_XDIST_WORKER=gw1``) and how many there
are (``PYTEST_XDIST_WORKER_COUNT``); a run without xdist is one worker, number 0.
"""

from __future__ import annotations

import os
import re


def worker_count() -> int:
    """How many processes of this run work side by side (1 without xdist)."""
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    return int(count) if count.isdigit() and int(count) > 0 else 1


def worker_index() -> int:
    """This worker's number, 0 to ``worker_count() - 1`` (0 without xdist)."""
    found = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(found.group(1)) % worker_count() if found else 0


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
