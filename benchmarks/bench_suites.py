"""The shipped suites, scenelora against the plain transformers + PEFT loop, in one run.

Both do the same work: every check of ``suites/*.yaml`` on 4 adapters (the trained demo
roles) and on 16 (those 4 plus 12 variants: perturbed copies, each a distinct adapter
with its own content hash). The reference is ``naive_peft.py`` (per adapter: load the
base, ``PeftModel.from_pretrained``, generate and embed one item at a time); scenelora
runs as users run it, ``pytest suites/ --adapter DIR``, cold (empty result cache) and
warm (everything cached). One table: wall time, tokens of the work per second, peak
RSS, and naive / scenelora. Then pytest-xdist (``-n 2``) against one process, and a
scaling table over adapters (1, 4, 16) and samples per check (4, 16).

Both sides draw the same unseen scenes (seeded by the same ``--scenelora-seed``; ``CI=1``
keeps Hypothesis's example database out of it), and every scenelora verdict is compared
with the reference's (status and score): the ratio is only worth printing if the numbers
agree.

The last line reads ``ratio cold=<x> warm=<y>`` for the 16-adapter work.

Run: python benchmarks/bench_suites.py [--quick | --only 1|4|16] [--base NAME] [--threads N]
(--quick: 1 and 4 adapters, 4 samples per check, no scaling table: for trying the script, not
for figures; --only 16: the 16-adapter work alone, naive, cold and warm, about 12 minutes
instead of 25; --base smollm2-135m --only 1 --threads 1: one demo voice on the real base,
with the voices the demo trains there; --samples N caps every check's samples at N on both
sides, a check with fewer keeping its own, e.g. --base smollm2-135m --only 4 --samples 8).
Building the base and training the demo adapters (cached) is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
ROLES = ("logic", "poetic", "body", "silence")
COMMON = ["--device", "auto", "--base-model", "tiny"]  # passed to both sides; set from the options


@dataclass
class Run:
    label: str
    wall_s: float
    rss_mib: float
    verdicts: dict[str, dict] = field(default_factory=dict)
    generated: int | None = None
    out: str = ""


def _spawn(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Run *cmd*; wall seconds, peak RSS (MiB) of it and its children, and its output."""
    # GNU time measures from a small process: a child forked from this one would start with
    # this process's resident pages (torch, after training) counted in its peak
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        start = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd], env=env, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        wall = time.perf_counter() - start
        rss_kib = int(rss_file.read().strip().splitlines()[-1])
    return wall, rss_kib / 1024, out


def fresh_home(bases: Path) -> Path:
    """An empty SCENELORA_HOME (no results, no Hypothesis database) sharing the built base."""
    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    (home / "bases").symlink_to(bases)
    return home


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "SCENELORA_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "CI": "1"}


def scenelora(label: str, suites: Path, adapters: Path, home: Path, *extra: str) -> Run:
    xml = home / f"junit-{time.monotonic_ns()}.xml"
    cmd = [sys.executable, "-m", "pytest", str(suites), "--adapter", str(adapters), "-p", "no:cacheprovider",
           "-q", f"--junitxml={xml}", *COMMON, *extra]
    wall, rss, out = _spawn(cmd, env_for(home), ROOT)
    verdicts = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            for prop in case.iter("property"):
                if prop.get("name") == "scenelora_verdict":
                    verdicts[case.get("name")] = json.loads(prop.get("value"))
    found = re.search(r"scenelora: generated (\d+) new samples", out)
    if not verdicts:
        raise SystemExit(f"{label}: no verdicts; pytest said:\n{out[-3000:]}")
    return Run(label, wall, rss, verdicts, int(found.group(1)) if found else 0, out)


def naive(label: str, suites: Path, adapters: Path, home: Path, threads: int | None) -> Run:
    out_json = home / f"naive-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(HERE / "naive_peft.py"), str(suites), "--adapter", str(adapters),
           "--json", str(out_json), *COMMON] + (["--threads", str(threads)] if threads else [])
    wall, rss, out = _spawn(cmd, env_for(home), ROOT)
    if not out_json.exists():
        raise SystemExit(f"{label}: failed:\n{out[-3000:]}")
    data = json.loads(out_json.read_text(encoding="utf-8"))
    run = Run(label, wall, rss, data["verdicts"], data["stats"]["samples"], out)
    run.tokens = data["stats"]["new_tokens"]  # type: ignore[attr-defined]
    return run


def agreement(ours: dict[str, dict], theirs: dict[str, dict]) -> tuple[bool, float]:
    """Same items, same statuses; and the largest relative score difference."""
    if set(ours) != set(theirs):
        return False, float("nan")
    worst, same = 0.0, True
    for name, verdict in ours.items():
        other = theirs[name]
        same &= verdict["status"] == other["status"]
        a, b = verdict["score"], other["score"]
        if a is None or b is None:
            same &= a is b
            continue
        worst = max(worst, abs(a - b) / max(1.0, abs(a)))
    return same, worst


def make_variants(trained: list[Path], out: Path, copies: int) -> Path:
    """*trained* plus ``copies - 1`` perturbed copies of each: distinct adapters of the same role.

    Copy k scales every lora_B by (1 + 0.04 k) and adds seeded noise of 2% of each lora_A's
    spread: a different content hash, the same scene and role (kept in the metadata; the
    name ``Δ42_poetic-v2`` still matches the suites' ``Δ42_*``).
    """
    import torch
    from safetensors.torch import load_file, save_file

    from pytest_scenelora.engine.adapters import read_adapter

    out.mkdir(parents=True, exist_ok=True)
    for path in trained:
        shutil.copy(path, out / path.name)
        info = read_adapter(path)
        tensors = load_file(str(path))
        for k in range(1, copies):
            generator = torch.Generator().manual_seed(1000 * k + len(info.name))
            varied = {}
            for key, value in tensors.items():
                if "lora_B" in key:
                    varied[key] = value * (1 + 0.04 * k)
                else:
                    noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
                    varied[key] = value + noise * value.std() * 0.02
            meta = {**info.metadata, "peft_config": json.dumps(info.peft_config)}
            save_file(varied, str(out / f"{info.name}-v{k}.safetensors"), metadata=meta)
    return out


def suites_with_samples(dst: Path, samples: int, *, cap: bool = False) -> Path:
    """The shipped suites with every ``samples:`` set to *samples* (*cap*: at most *samples*)."""
    dst.mkdir(parents=True, exist_ok=True)

    def value(match: re.Match[str]) -> str:
        return f"{match[1]}{min(int(match[2]), samples) if cap else samples}"

    for path in sorted((ROOT / "suites").glob("*.yaml")):
        text = re.sub(r"(?m)^(\s+samples:\s*)(\d+)", value, path.read_text(encoding="utf-8"))
        (dst / path.name).write_text(text, encoding="utf-8")
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 adapters only, no scaling table")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--only", type=int, choices=(1, 4, 16), metavar="N",
                        help="just the N-adapter work (1, 4 or 16): naive, cold and warm, and the ratio line")
    parser.add_argument("--base", default="tiny",
                        help="the base both sides run on (a real one, e.g. smollm2-135m, with --only 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads training the demo voices uses")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="every check's samples at most N, on both sides (a real base's naive loop "
                             "takes ~10 minutes per adapter at the shipped sizes)")
    args = parser.parse_args()
    COMMON[1], COMMON[3] = args.device, args.base

    from pytest_scenelora.engine.bases import TINY, resolve_base
    from pytest_scenelora.engine.tinybase import ensure_tiny_base
    from pytest_scenelora.engine.training import train_demo_library

    base_dir = ensure_tiny_base() if args.base == TINY else resolve_base(args.base)
    bases = base_dir.parent
    work = Path(tempfile.mkdtemp(prefix="bench-suites-"))
    trained = [r.path for r in train_demo_library(work / "trained", base=args.base, threads=args.threads)]
    one = work / "one"
    one.mkdir()
    shutil.copy(trained[1], one)
    sets = {1: one, 4: make_variants(trained, work / "four", 1)}
    if not args.quick:
        sets[16] = make_variants(trained, work / "sixteen", 4)
    if args.only:
        sets = {args.only: sets[args.only]}
    if args.quick:
        suites = suites_with_samples(work / "suites-quick", 4)
    elif args.samples:
        suites = suites_with_samples(work / f"suites-at-most-{args.samples}", args.samples, cap=True)
    else:
        suites = ROOT / "suites"
    big = max(sets)

    cold: dict[int, Run] = {}
    warm: dict[int, Run] = {}
    refs: dict[int, Run] = {}
    for count in sorted(c for c in sets if c > 1 or args.only == 1):
        home = fresh_home(bases)
        refs[count] = naive(f"naive (1 torch thread), {count} adapters", suites, sets[count], home, threads=1)
        cold[count] = scenelora(f"scenelora cold, {count} adapters", suites, sets[count], home)
        warm[count] = scenelora(f"scenelora warm, {count} adapters", suites, sets[count], home)
    if args.only:
        _table(refs, cold, warm)
        _ratio_line(refs, cold, warm)
        return
    home = fresh_home(bases)
    naive_default = naive("naive (torch's default threads), 1 adapter", suites, sets[1], home, threads=None)
    cold[1] = scenelora("scenelora cold, 1 adapter", suites, sets[1], home)
    xdist_home = fresh_home(bases)
    xdist = scenelora(f"scenelora cold, {big} adapters, -n 2", suites, sets[big], xdist_home, "-n", "2")

    _table(refs, cold, warm)
    tokens = naive_default.tokens  # type: ignore[attr-defined]
    for run in (naive_default, cold[1]):
        same, worst = agreement(run.verdicts, naive_default.verdicts)
        ratio = "" if run is naive_default else f"{naive_default.wall_s / run.wall_s:.1f}x"
        agree = "(reference)" if run is naive_default else f"{same} (max rel. score diff {worst:.1e})"
        print(f"| 1 adapter | {run.label} | {run.wall_s:.1f} s | {tokens / run.wall_s:,.0f} "
              f"| {run.rss_mib:.0f} MiB | {ratio} | {agree} |")
    print()
    print(f"peak RSS, scenelora cold: 1 adapter {cold[1].rss_mib:.0f} MiB, {big} adapters "
          f"{cold[big].rss_mib:.0f} MiB: {cold[big].rss_mib / cold[1].rss_mib:.2f}x (target <= 1.2x)")
    same_x, worst_x = agreement(xdist.verdicts, cold[big].verdicts)
    print(f"pytest-xdist, {big} adapters cold: -n 0 {cold[big].wall_s:.1f} s, -n 2 {xdist.wall_s:.1f} s: "
          f"{cold[big].wall_s / xdist.wall_s:.2f}x faster; same verdicts: {same_x} "
          f"(max rel. score diff {worst_x:.1e})")

    if not args.quick:
        print()
        print("| adapters | samples per check | cold wall | samples generated | ms per sample |")
        print("|---|---|---|---|---|")
        for samples in (4, 16):
            scaled = suites_with_samples(work / f"suites-{samples}", samples)
            for count in (1, 4, 16):
                run = scenelora(f"{count}x{samples}", scaled, sets[count], fresh_home(bases))
                print(f"| {count} | {samples} | {run.wall_s:.1f} s | {run.generated} "
                      f"| {1000 * run.wall_s / max(run.generated, 1):.0f} |")
    print()
    _ratio_line(refs, cold, warm)


def _table(refs: dict[int, Run], cold: dict[int, Run], warm: dict[int, Run]) -> None:
    print("| work | run | wall | tokens/s of the work | peak RSS | naive / scenelora | verdicts as naive |")
    print("|---|---|---|---|---|---|---|")
    for count in sorted(refs):
        ref = refs[count]
        tokens = ref.tokens  # type: ignore[attr-defined]
        for run in (ref, cold[count], warm[count]):
            same, worst = agreement(run.verdicts, ref.verdicts)
            ratio = "" if run is ref else f"{ref.wall_s / run.wall_s:.1f}x"
            agree = "(reference)" if run is ref else f"{same} (max rel. score diff {worst:.1e})"
            print(f"| {count} adapters | {run.label} | {run.wall_s:.1f} s | {tokens / run.wall_s:,.0f} "
                  f"| {run.rss_mib:.0f} MiB | {ratio} | {agree} |")


def _ratio_line(refs: dict[int, Run], cold: dict[int, Run], warm: dict[int, Run]) -> None:
    top = max(refs)
    print(f"ratio cold={refs[top].wall_s / cold[top].wall_s:.2f} "
          f"warm={refs[top].wall_s / warm[top].wall_s:.1f}")


if __name__ == "__main__":
    main()
