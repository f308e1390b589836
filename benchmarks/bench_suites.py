"""The shipped suites on the four demo adapters: cold (empty result cache) and warm.

Targets on 2 cores: at most 2 minutes cold and 15 seconds warm. The reference measured in
the same run is the bare cost of starting pytest and importing the stack (a run that
collects the suites and runs nothing), so the ratios show what the checks themselves cost.

Run: python benchmarks/bench_suites.py   (builds the tiny base and trains the adapters first
when they are not cached; that time is not counted)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], home: Path) -> tuple[float, str]:
    env = {**os.environ, "SCENELORA_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    from pytest_scenelora.fsutil import cache_home
    from pytest_scenelora.tinybase import ensure_tiny_base
    from pytest_scenelora.training import train_demo_library

    ensure_tiny_base()
    adapters = Path(tempfile.mkdtemp(prefix="bench-suites-")) / "adapters"
    train_demo_library(adapters)
    home = Path(tempfile.mkdtemp(prefix="bench-suites-home-"))
    (home / "bases").symlink_to(cache_home() / "bases")  # same base, empty result cache
    suites = [str(ROOT / "suites"), "--adapter", str(adapters)]
    bare, _ = run([*suites, "--collect-only"], home)
    cold, cold_out = run(suites, home)
    warm, warm_out = run(suites, home)
    summary = re.findall(r"^\d+ (?:passed|failed).*$", cold_out, re.M)
    generated = re.findall(r"scenelora: generated (\d+) new samples, reused (\d+)", cold_out + warm_out)
    print("| run | wall | reference | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| collect only (pytest + imports) | {bare:.1f} s | | | |")
    print(f"| shipped suites, 4 adapters, cold | {cold:.1f} s | budget 120 s | {cold / 120:.2f} of budget "
          f"| <= 120 s |")
    print(f"| same, warm (all cached) | {warm:.1f} s | cold {cold:.1f} s | {cold / warm:.1f}x faster "
          f"| <= 15 s |")
    print(f"| outcome (cold) | {summary[-1] if summary else '?'} | | | |")
    print(f"| samples generated cold / warm | {generated[0][0] if generated else '?'} / "
          f"{generated[1][0] if len(generated) > 1 else '0'} | | | warm: 0 |")


if __name__ == "__main__":
    main()
