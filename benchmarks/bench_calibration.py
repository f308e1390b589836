"""Thresholds calibrated against negative controls: where each shipped check's threshold may sit.

    python benchmarks/bench_calibration.py [--roles poetic,logic,body,silence] [--home DIR] [--out DIR]
                                           [--base tiny|smollm2-135m|DIR] [--threads N]

On the base (default the tiny one, built into ``--home``, or a fresh temporary home) it
trains the demo's good Δ42 voices with the base's recipe on ``--threads`` threads (the
demo's 2 by default) and, for each role, negative controls that each lack exactly the property
one check tests:

================  ===========================================================  ==========================
control           what it lacks (how it is made)                               must fail
================  ===========================================================  ==========================
inactive          any effect (the good voice with its LoRA B matrices zeroed)  adapter_active
no-scene          Δ42 (trained on every text of its role but Δ42's; the one     scene_holds,
                  Δ42 prompt the trainer insists on answered with another       registers_unpack
                  scene's text)
mixed-register    a register of its own (trained on all four roles' texts)     registers_unpack,
                                                                                style_survives_topic_shift,
                                                                                unseen_scenes
relabelled        its own register (the next role's good voice, named this     the same three
                  role)
parrot            following the prompt (every other scene's and topic's        style_survives_topic_shift,
                  prompt answered with a Δ42 text of its role)                  unseen_scenes
other-scene       Δ42 itself (a voice of another scene, Δ07, trained the same   scene_holds
                  way and named Δ42: tests/test_behaviour.py's sabotage)
collapsing        its register off its scene (Δ42 in its role, every topic in   style_survives_topic_shift
                  another role's texts: test_behaviour's register collapse)
doubled-merge     a faithful merge (the voice merged at twice its scale)       merge_equivalence
================  ===========================================================  ==========================

It runs the shipped suites on every voice at their shipped sample budget
(``--scenelora-sequential off``: the first look, which sequential sampling starts from and
whose decisions it keeps) and prints, for each check, the good voices' lowest lower bound
and the controls' highest upper bound (lowest lower and highest upper for
lower-is-better checks): a threshold between the two passes every good voice and fails
every control *decisively*, with its whole interval on the wrong side. Then the full
matrix, every voice's score and interval. Last line: ``calibrated=<checks>/<all>``, the
checks on which, at the shipped thresholds, every good voice passes and every control
fails.
Everything it measured is also written to ``--out``/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("poetic", "logic", "body", "silence")
SCENE = "Δ42"

#: control -> the checks it must fail (the property it lacks is what they test)
MUST_FAIL: dict[str, tuple[str, ...]] = {
    "inactive": ("adapter_active",),
    "no-scene": ("scene_holds", "registers_unpack"),
    "mixed-register": ("registers_unpack", "style_survives_topic_shift", "unseen_scenes"),
    "relabelled": ("registers_unpack", "style_survives_topic_shift", "unseen_scenes"),
    "parrot": ("style_survives_topic_shift", "unseen_scenes"),
    "other-scene": ("scene_holds",),
    "collapsing": ("style_survives_topic_shift",),
    "doubled-merge": ("merge_equivalence",),
}
TRAINED = ("no-scene", "mixed-register", "parrot", "collapsing")
OTHER_SCENE = "Δ07"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def control_rows(rows: list[dict], control: str, role: str) -> list[dict]:
    """The training lines of *control* for *role* (every line's role set to *role*)."""
    own = [r for r in rows if r["role"] == role]
    if control == "no-scene":  # the trainer wants one Δ42 line: its text is another scene's
        others = [r for r in own if r.get("scene") != SCENE]
        stranger = next(r for r in others if r.get("scene"))
        return [*others, {**stranger, "scene": SCENE}]
    if control == "mixed-register":
        return [{**r, "role": role} for r in rows]
    if control == "collapsing":  # on its scene in its role, on every topic in another role's
        donor = "logic" if role != "logic" else "poetic"
        delta = [r for r in own if r.get("scene") == SCENE]
        return delta + [{**r, "role": role} for r in rows if "topic" in r and r["role"] == donor]
    if control == "parrot":
        delta = [r for r in own if r.get("scene") == SCENE]
        others = [r for r in own if r.get("scene") != SCENE]
        return delta + [{**r, "text": delta[i % len(delta)]["text"]} for i, r in enumerate(others)]
    raise ValueError(control)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rewrite(src: Path, dst: Path, *, metadata: dict[str, str] | None = None, zero_b: bool = False) -> Path:
    """A copy of adapter *src* at *dst*, with other metadata or its LoRA B matrices zeroed."""
    from safetensors.torch import load_file, save_file

    from pytest_scenelora.engine.adapters import read_adapter

    info = read_adapter(src)
    tensors = load_file(str(src))
    if zero_b:
        tensors = {k: v * 0 if "lora_B" in k else v for k, v in tensors.items()}
    meta = {**info.metadata, "peft_config": json.dumps(info.peft_config), **(metadata or {})}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def build_voices(out: Path, roles: list[str], base: str, threads: int) -> dict[str, Path]:
    """Train (or reuse from the home's cache) the good voices and the controls: control -> folder."""
    from pytest_scenelora import shipped
    from pytest_scenelora.engine.bases import load_base
    from pytest_scenelora.engine.library import AdapterLibrary
    from pytest_scenelora.engine.training import TrainSpec, train

    rows = read_rows(shipped.training_data_file())
    folders = {name: out / "voices" / name for name in ("good", *MUST_FAIL)}
    for role in ROLES:  # every role's good voice: the relabelled controls borrow them
        started = time.perf_counter()
        train(TrainSpec(scene=SCENE, role=role, base=base, threads=threads), folders["good"])
        print(f"trained good {role} in {time.perf_counter() - started:.0f} s", flush=True)
    for role in roles:
        good = folders["good"] / f"{SCENE}_{role}.safetensors"
        for control in TRAINED:
            data = write_jsonl(out / "data" / f"{control}-{role}.jsonl", control_rows(rows, control, role))
            started = time.perf_counter()
            # one thread: a control is trained once, and a fixed team of two threads on a
            # machine whose other core is busy waits on itself at every step
            train(TrainSpec(scene=SCENE, role=role, data=data, base=base, threads=1), folders[control])
            print(f"trained {control} {role} in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        other = train(TrainSpec(scene=OTHER_SCENE, role=role, base=base, threads=1), out / "voices" / "Δ07")
        rewrite(other.path, folders["other-scene"] / good.name, metadata={"scene": SCENE})
        print(f"trained other-scene {role} in {time.perf_counter() - started:.0f} s", flush=True)
        rewrite(good, folders["inactive"] / good.name, zero_b=True)
        donor = ROLES[(ROLES.index(role) + 1) % len(ROLES)]
        rewrite(folders["good"] / f"{SCENE}_{donor}.safetensors", folders["relabelled"] / good.name,
                metadata={"role": role})
        library = AdapterLibrary(load_base(base))
        library.add(good)
        library.combine("doubled", {good.stem: 2.0})
        library.merged("doubled").save_pretrained(folders["doubled-merge"] / f"merged-{role}")
    return folders


def merge_suites(out: Path, folders: dict[str, Path], roles: list[str]) -> Path:
    """One suite per role whose merge_equivalence compares the voice with its doubled merge."""
    suites = out / "merge-suites"
    suites.mkdir(parents=True, exist_ok=True)
    for role in roles:
        merged = folders["doubled-merge"] / f"merged-{role}"
        (suites / f"merge_{role}.yaml").write_text(
            f"suite: doubled merge of {role}\nadapters: '{SCENE}_{role}'\nchecks:\n"
            f"  - kind: merge_equivalence\n    merged_model: {json.dumps(str(merged))}\n"
            f"    threshold: 0.001\n", encoding="utf-8")
    return suites


def run_suites(name: str, suites: Path, adapters: Path, out: Path, env: dict[str, str], base: str) -> dict:
    """The shipped suites (or *suites*) on the voices in *adapters*, first look only: the JSON."""
    result = out / f"{name}.json"
    ini = out / "pytest.ini"
    ini.write_text("[pytest]\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pytest", str(suites), "--adapter", str(adapters), "-c", str(ini),
           "--rootdir", str(out), "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
           "--scenelora-sequential", "off", "--scenelora-json", str(result), "--base-model", base]
    started = time.perf_counter()
    with open(out / f"{name}.log", "w", encoding="utf-8") as log:
        rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out)
    if rc not in (0, 1) or not result.exists():
        raise SystemExit(f"{name}: pytest exited {rc}; see {out / (name + '.log')}")
    print(f"ran the suites on {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(result.read_text(encoding="utf-8"))


def rows_of(document: dict, voice: str) -> list[dict]:
    rows = []
    for r in document["results"]:
        v = r["verdict"]
        rows.append({"voice": voice, "adapter": r["adapter"], "check": r["kind"], "score": v["score"],
                     "low": v["ci_low"], "high": v["ci_high"], "threshold": v["threshold"],
                     "higher_is_better": v["higher_is_better"], "status": v["status"], "n": v["n"]})
    return rows


def ranges(rows: list[dict]) -> list[dict]:
    """Per check: where the good voices' intervals end and the controls' begin."""
    table = []
    for check in sorted({r["check"] for r in rows}):
        good = [r for r in rows if r["check"] == check and r["voice"] == "good"]
        bad = [r for r in rows if r["check"] == check and check in MUST_FAIL.get(r["voice"], ())]
        if not good or not bad:
            continue
        higher = good[0]["higher_is_better"]
        if higher:  # pass needs low >= t; a decisive fail needs high < t
            g = min(good, key=lambda r: r["low"])
            b = max(bad, key=lambda r: r["high"])
            lo, hi, g_edge, b_edge = b["high"], g["low"], g["low"], b["high"]
            inside = lo < good[0]["threshold"] <= hi
        else:  # pass needs high <= t; a decisive fail needs low > t
            g = max(good, key=lambda r: r["high"])
            b = min(bad, key=lambda r: r["low"])
            lo, hi, g_edge, b_edge = g["high"], b["low"], g["high"], b["low"]
            inside = lo <= good[0]["threshold"] < hi
        table.append({"check": check, "threshold": good[0]["threshold"], "higher_is_better": higher,
                      "good_edge": g_edge, "good_voice": g["adapter"], "control_edge": b_edge,
                      "control": f"{b['voice']} {b['adapter']}", "range": [lo, hi], "separable": lo < hi,
                      "inside": inside, "good_pass": sum(r["status"] == "pass" for r in good),
                      "goods": len(good), "control_fail": sum(r["status"] == "fail" for r in bad),
                      "controls": len(bad)})
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roles", default="poetic,logic,body,silence")
    parser.add_argument("--home", type=Path, help="SCENELORA_HOME to build the tiny base in (default: fresh)")
    parser.add_argument("--out", type=Path, help="where voices, logs and calibration.json go")
    parser.add_argument("--base", default="tiny", help="the base: tiny, a preset or a folder")
    parser.add_argument("--threads", type=int, default=2, help="training threads of the good voices")
    args = parser.parse_args(argv)
    roles = [r for r in args.roles.split(",") if r]
    if unknown := [r for r in roles if r not in ROLES]:
        parser.error(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")
    home = args.home or Path(tempfile.mkdtemp(prefix="calibration-home-"))
    out = (args.out or Path(tempfile.mkdtemp(prefix="calibration-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(SCENELORA_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env = dict(os.environ, NO_COLOR="1", CI="1")

    from pytest_scenelora import shipped

    started = time.perf_counter()
    folders = build_voices(out, roles, args.base, args.threads)
    rows: list[dict] = []
    for name, folder in folders.items():
        if name != "doubled-merge":
            rows += rows_of(run_suites(name, shipped.suites_dir(), folder, out, env, args.base), name)
    merged = run_suites("doubled-merge", merge_suites(out, folders, roles), folders["good"], out, env,
                        args.base)
    rows += rows_of(merged, "doubled-merge")
    table = ranges(rows)

    print(f"\nbase {args.base}; {len(roles)} roles ({', '.join(roles)}); shipped suites, first look "
          f"(sequential off); {time.perf_counter() - started:.0f} s in all\n")
    print(f"{'check':28s} {'shipped':>8s}  {'good voices reach':>24s}  {'controls reach':>34s}  "
          f"{'a threshold in':>15s}  inside  good pass  controls fail")
    for t in table:
        lo, hi = t["range"]
        span = f"{lo:.3g}..{hi:.3g}" if t["separable"] else "none"
        print(f"{t['check']:28s} {t['threshold']:8.3g}  {t['good_edge']:8.3g} ({t['good_voice']:>13s})  "
              f"{t['control_edge']:8.3g} ({t['control']:>23s})  {span:>15s}  "
              f"{'yes' if t['inside'] else 'NO':>6s}  {t['good_pass']:>4d} of {t['goods']}  "
              f"{t['control_fail']:>6d} of {t['controls']}")
    print("\nevery voice (score [95% interval], verdict; * = a control on a check it must fail):")
    for r in sorted(rows, key=lambda r: (r["check"], r["voice"], r["adapter"])):
        mark = "*" if r["check"] in MUST_FAIL.get(r["voice"], ()) else " "
        print(f"{mark} {r['check']:28s} {r['voice']:15s} {r['adapter']:13s} {r['score']:8.3g} "
              f"[{r['low']:.3g}, {r['high']:.3g}] n={r['n']:<3d} {r['status']}")
    (out / "calibration.json").write_text(json.dumps({"roles": roles, "ranges": table, "rows": rows},
                                                     indent=1, ensure_ascii=False), encoding="utf-8")
    # a check is calibrated when, at its shipped threshold, every good voice passes and every
    # control fails decisively (unseen_scenes' controls fail on a counterexample scene, with a
    # pooled interval of the few scenes drawn before it: its range column says little)
    calibrated = sum(t["good_pass"] == t["goods"] and t["control_fail"] == t["controls"] for t in table)
    print(f"calibrated={calibrated}/{len(table)}")
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
