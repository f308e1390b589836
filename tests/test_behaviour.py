"""The checks must discriminate: real Δ42 voices pass, adapters built to fail do fail.

Trains the four demo adapters once per session (cached by content), builds one
sabotaged adapter per check, and runs the shipped suites on them through pytest itself.
Also: a warm re-run generates nothing, a changed adapter byte regenerates only that
adapter's rows, and pytest-xdist gives the verdicts of a single process.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SUITES = Path(__file__).parent.parent / "suites"

#: Adapters built to fail are trained shorter than the real voices (150 steps): what makes
#: them fail (another scene's data, data of one scene only) is there from the first steps.
SABOTAGE_STEPS = 60


@pytest.fixture
def fresh_home(scenelora_home: Path, tmp_path: Path, monkeypatch):
    """``fresh_home(name)``: a SCENELORA_HOME of this test's own (no cached results, no
    example database) that shares the session's built base; set in the environment."""

    def make(name: str = "home") -> Path:
        home = tmp_path / name
        home.mkdir()
        (home / "bases").symlink_to(scenelora_home / "bases")
        monkeypatch.setenv("SCENELORA_HOME", str(home))
        return home

    return make


def _rewrite(src: Path, dst: Path, *, metadata=None, transform=None) -> Path:
    from safetensors.torch import load_file, save_file

    from pytest_scenelora.engine.adapters import read_adapter

    info = read_adapter(src)
    tensors = load_file(str(src))
    if transform:
        tensors = {k: transform(k, v) for k, v in tensors.items()}
    meta = {**info.metadata, "peft_config": json.dumps(info.peft_config), **(metadata or {})}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def run_suite(pytester: pytest.Pytester, suite: str, adapters: Path | list[Path], *args: str):
    paths = adapters if isinstance(adapters, list) else [adapters]
    shutil.copy(SUITES / suite, pytester.path / suite)
    options = [a for p in paths for a in ("--adapter", str(p))]
    return pytester.runpytest(suite, *options, "-p", "no:cacheprovider", "-rA", *args)


def outcome_of(result: pytest.RunResult, item: str) -> str:
    """'PASSED' or 'FAILED' for a node id fragment such as 'scene_holds[Δ42_poetic]'."""
    for line in result.stdout.lines:
        match = re.match(r"^(PASSED|FAILED|ERROR) \S*::(\S+)", line)
        if match and match.group(2) == item:
            return match.group(1)
    raise AssertionError(f"{item} not in the summary:\n{result.stdout.str()}")


def verdicts_of(result: pytest.RunResult, xml: Path) -> dict[str, dict]:
    """Each check item's verdict (status, score, interval) from the run's JUnit XML."""
    assert result.ret in (0, 1), result.stdout.str()
    return {case.get("name"): json.loads(prop.get("value"))
            for case in ET.parse(xml).getroot().iter("testcase")
            for prop in case.iter("property") if prop.get("name") == "scenelora_verdict"}


def test_the_four_real_voices_hold_the_scene_field(pytester, demo_adapters) -> None:
    result = run_suite(pytester, "scene_field.yaml", demo_adapters)
    result.assert_outcomes(passed=4 * 3)  # adapter_active, scene_holds, merge_equivalence


@pytest.mark.parametrize("suite", ["registers.yaml", "topic_shift.yaml", "unseen_scenes.yaml"])
def test_the_real_voices_keep_their_registers(pytester, demo_adapters, tmp_path, suite: str) -> None:
    """Every voice passes: its own register on Δ42, after a change of topic, and on scenes
    it was never trained on (figures, places and objects no training example holds)."""
    xml = tmp_path / "verdicts.xml"
    verdicts = verdicts_of(run_suite(pytester, suite, demo_adapters, f"--junitxml={xml}"), xml)
    assert len(verdicts) == 4, verdicts
    for name, verdict in verdicts.items():
        assert verdict["status"] == "pass", (name, verdict)


def test_real_voices_are_active_and_a_zero_adapter_is_not(pytester, demo_adapters, tmp_path) -> None:
    zero = _rewrite(demo_adapters / "Δ42_poetic.safetensors", tmp_path / "zero" / "Δ42_body.safetensors",
                    transform=lambda k, v: v * 0 if "lora_B" in k else v, metadata={"role": "body"})
    result = run_suite(pytester, "scene_field.yaml", [demo_adapters / "Δ42_poetic.safetensors",
                                                      demo_adapters / "Δ42_logic.safetensors", zero],
                       "-k", "adapter_active")
    assert outcome_of(result, "adapter_active[Δ42_poetic]") == "PASSED"
    assert outcome_of(result, "adapter_active[Δ42_logic]") == "PASSED"
    assert outcome_of(result, "adapter_active[Δ42_body]") == "FAILED"
    result.stdout.fnmatch_lines(["*adapter_active[[]Δ42_body[]]: FAIL*"])


def test_another_scene_named_delta42_fails_scene_holds(pytester, demo_adapters, tmp_path) -> None:
    from pytest_scenelora.engine.training import AdapterTrainer

    other = AdapterTrainer()(scene="Δ07", role="poetic", steps=SABOTAGE_STEPS)
    fake = _rewrite(other.path, tmp_path / "fake" / "Δ42_poetic.safetensors", metadata={"scene": "Δ42"})
    result = run_suite(pytester, "scene_field.yaml", fake, "-k", "scene_holds")
    assert outcome_of(result, "scene_holds[Δ42_poetic]") == "FAILED"


def test_the_logic_voice_relabelled_poetic_fails_registers_unpack(pytester, demo_adapters, tmp_path) -> None:
    fake = _rewrite(demo_adapters / "Δ42_logic.safetensors", tmp_path / "fake" / "Δ42_poetic.safetensors",
                    metadata={"role": "poetic"})
    result = run_suite(pytester, "registers.yaml", fake)
    assert outcome_of(result, "registers_unpack[Δ42_poetic]") == "FAILED"
    result.stdout.fnmatch_lines(["*registers_unpack[[]Δ42_poetic[]]: FAIL*"])


def test_the_logic_voice_relabelled_poetic_fails_unseen_scenes_on_a_listed_scene(
        pytester, demo_adapters, tmp_path) -> None:
    """The scenes file's own unseen scenes are tried first; the first that fails is reported."""
    fake = _rewrite(demo_adapters / "Δ42_logic.safetensors", tmp_path / "fake" / "Δ42_poetic.safetensors",
                    metadata={"role": "poetic"})
    result = run_suite(pytester, "unseen_scenes.yaml", fake)
    assert outcome_of(result, "unseen_scenes[Δ42_poetic]") == "FAILED"
    result.stdout.fnmatch_lines([
        "*unseen_scenes[[]Δ42_poetic[]]: FAIL*",
        "*minimal failing scene: scene 'The beekeeper carries the honey jar in the orchard on a "
        "summer evening.'*held it in the poetic register (95% CI *), needs 0.50",
    ])


def test_a_drawn_failing_scene_is_shrunk_printed_and_replayed_first(
        pytester, demo_adapters, tmp_path, fresh_home, monkeypatch) -> None:
    """Without listed unseen scenes the failure is a drawn one: Hypothesis shrinks it to the
    first word of every held-out vocabulary (within the shrink budget), keeps it in its
    example database, and the next run (another seed) tries it first."""
    import yaml

    from pytest_scenelora import shipped

    monkeypatch.delenv("CI", raising=False)  # under CI the profile keeps no example database
    home = fresh_home()  # an example database of this test's own
    scenes = yaml.safe_load(shipped.scenes_file().read_text(encoding="utf-8"))
    scenes["scenes"] = [s for s in scenes["scenes"] if s["split"] == "train"]
    (pytester.path / "scenes.yaml").write_text(yaml.safe_dump(scenes, allow_unicode=True), encoding="utf-8")
    pytester.makefile(".yaml", drawn=("adapters: 'Δ42_*'\nscenes: scenes.yaml\n"
                                      "generation:\n  temperature: 0.5\nchecks:\n"
                                      "  - kind: unseen_scenes\n    examples: 3\n    samples: 8\n"
                                      "    threshold: 0.5\n"))
    fake = _rewrite(demo_adapters / "Δ42_logic.safetensors", tmp_path / "fake" / "Δ42_poetic.safetensors",
                    metadata={"role": "poetic"})
    minimal = "The beekeeper carries the honey jar in the orchard on a summer evening."
    runs = []
    for seed in ("1", "2"):
        report = tmp_path / f"run-{seed}.json"
        result = pytester.runpytest("drawn.yaml", "--adapter", str(fake), "--scenelora-seed", seed,
                                    f"--scenelora-json={report}", "-p", "no:cacheprovider")
        assert result.ret == 1, result.stdout.str()
        result.stdout.fnmatch_lines([f"*minimal failing scene: scene '{minimal}'*"])
        [verdict] = [r["verdict"] for r in json.loads(report.read_text(encoding="utf-8"))["results"]]
        assert verdict["detail"]["minimal_failing_scene"]["core"] == minimal
        runs.append(verdict["detail"])
        if seed == "2":  # the kept failure is all it tried and generated (its 8 samples
            assert generated_count(result) == 8  # under this seed): no draws were listed ahead
        if seed == "1":
            database = home / "hypothesis"
            assert database.is_dir() and any(p.is_file() for p in database.rglob("*")), \
                "the failure was not kept for the next run"
    from pytest_scenelora.checks.unseen import SHRINK_BUDGET

    assert 1 < runs[0]["scenes_tried"] <= 3 + SHRINK_BUDGET + 1, runs[0]["scenes_tried"]
    # the next run replays the kept failure first: it fails again and is already minimal
    assert [p["scene"] for p in runs[1]["per_scene"]] == [minimal]


#: A conftest for a pytester run: keeps the size of every generation batch in batches.json.
BATCH_LOG = """
import json, pathlib
from pytest_scenelora.engine.library import AdapterLibrary

HERE, ORIGINAL, SIZES = pathlib.Path(__file__).parent, AdapterLibrary.generate, []

def logged(self, prompts, *args, **kwargs):
    SIZES.append(len(prompts))
    return ORIGINAL(self, prompts, *args, **kwargs)

def pytest_configure(config):
    AdapterLibrary.generate = logged

def pytest_unconfigure(config):
    AdapterLibrary.generate = ORIGINAL
    (HERE / "batches.json").write_text(json.dumps(SIZES))
"""


@pytest.mark.parametrize("ci", ["", "1"], ids=["seeded", "ci"])
def test_an_unseen_scenes_check_generates_every_scene_in_one_batch(
        pytester, demo_adapters, fresh_home, monkeypatch, ci: str) -> None:
    """The scenes Hypothesis will draw are known before it runs them (the same seeded
    engine lists them first), so a passing check generates the listed and drawn scenes'
    samples together: 8 scenes x 8 samples is one batch of at most 64 rows, not eight."""
    from pytest_scenelora.checks.runner import BATCH_ROWS
    from pytest_scenelora.scenes import Split, load_scenes
    from pytest_scenelora.suite import load_suite

    monkeypatch.setenv("CI", ci)
    fresh_home()  # nothing cached: every sample is generated
    pytester.makeconftest(BATCH_LOG)
    result = run_suite(pytester, "unseen_scenes.yaml", demo_adapters / "Δ42_poetic.safetensors")
    assert outcome_of(result, "unseen_scenes[Δ42_poetic]") == "PASSED"
    [spec] = load_suite(SUITES / "unseen_scenes.yaml").checks
    sizes = json.loads((pytester.path / "batches.json").read_text())
    assert len(sizes) == 1 and sizes[0] <= BATCH_ROWS, sizes
    # the listed scenes and at least most of the drawn ones (a draw may repeat a scene)
    listed = len(load_scenes().split(Split.UNSEEN))
    assert sizes[0] >= (listed + spec["examples"] - 1) * spec["samples"], sizes
    assert generated_count(result) == sizes[0]


def test_ci_draws_the_unseen_scenes_a_developer_run_draws(pytester, demo_adapters, tmp_path,
                                                         monkeypatch) -> None:
    """The draws depend on --scenelora-seed only: not on CI being set (where no example
    database is kept), and so not on the source of the code that runs them."""
    drawn = {}
    for ci in ("", "1"):
        monkeypatch.setenv("CI", ci)
        report = tmp_path / f"ci-{ci or 'unset'}.json"
        run_suite(pytester, "unseen_scenes.yaml", demo_adapters / "Δ42_body.safetensors",
                  f"--scenelora-json={report}")
        [verdict] = [r["verdict"] for r in json.loads(report.read_text(encoding="utf-8"))["results"]]
        drawn[ci] = [s["scene"] for s in verdict["detail"]["per_scene"]]
    assert len(set(drawn[""])) >= 6 and drawn[""] == drawn["1"]


def test_a_failing_unseen_scenes_check_generates_no_more_than_one_batch_ahead(
        pytester, demo_adapters, tmp_path, fresh_home, monkeypatch) -> None:
    """With 20 scenes to draw, the draws known ahead are generated a batch at a time; the
    relabelled voice fails on its first listed scene, so Hypothesis draws nothing more and
    only that first batch (3 listed + 5 drawn scenes of 8 samples) was generated."""
    from pytest_scenelora.checks.runner import BATCH_ROWS

    monkeypatch.setenv("CI", "1")
    fresh_home()
    pytester.makefile(".yaml", many=("adapters: 'Δ42_*'\ngeneration:\n  temperature: 0.5\nchecks:\n"
                                     "  - kind: unseen_scenes\n    examples: 20\n    samples: 8\n"
                                     "    threshold: 0.5\n"))
    fake = _rewrite(demo_adapters / "Δ42_logic.safetensors", tmp_path / "fake" / "Δ42_poetic.safetensors",
                    metadata={"role": "poetic"})
    result = pytester.runpytest("many.yaml", "--adapter", str(fake), "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*unseen_scenes[[]Δ42_poetic[]]: FAIL*"])
    assert generated_count(result) == BATCH_ROWS  # not (3 + 20) x 8 = 184


def test_a_voice_whose_register_collapses_off_its_scene_fails_the_topic_shift(
        pytester, demo_adapters, tmp_path) -> None:
    """Poetic on Δ42, logic on every other topic: a voice whose register collapses when the
    topic changes. (A voice trained on Δ42 alone is no such thing on this base: its poetic
    register carries over to other topics on about half the samples.)"""
    from pytest_scenelora import shipped
    from pytest_scenelora.engine.training import AdapterTrainer

    lines = [json.loads(line) for line in
             shipped.training_data_file().read_text(encoding="utf-8").splitlines()]
    chosen = [line for line in lines if line.get("scene") == "Δ42" and line["role"] == "poetic"]
    chosen += [{**line, "role": "poetic"} for line in lines if "topic" in line and line["role"] == "logic"]
    data = tmp_path / "collapsing.jsonl"
    data.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in chosen), encoding="utf-8")
    collapsing = AdapterTrainer(out_dir=tmp_path / "collapsing")(scene="Δ42", role="poetic", data=data,
                                                                  steps=SABOTAGE_STEPS)
    xml = tmp_path / "verdicts.xml"
    result = run_suite(pytester, "topic_shift.yaml", collapsing.path, f"--junitxml={xml}")
    [verdict] = verdicts_of(result, xml).values()
    assert verdict["status"] == "fail", verdict
    result.stdout.fnmatch_lines(["*followed the topic in * of 48 samples, kept register 'poetic' in * of 48*"])


def test_a_merge_done_wrong_fails_merge_equivalence(pytester, demo_adapters, tiny_base, tmp_path) -> None:
    from pytest_scenelora.engine.library import AdapterLibrary

    library = AdapterLibrary(tiny_base)
    library.add(demo_adapters / "Δ42_poetic.safetensors")
    library.combine("doubled", {"Δ42_poetic": 2.0})
    library.merged("doubled").save_pretrained(tmp_path / "merged-wrong")
    library.merged("Δ42_poetic").save_pretrained(tmp_path / "merged-right")
    for name, expected in (("merged-right", "PASSED"), ("merged-wrong", "FAILED")):
        suite = pytester.makefile(".yaml", **{f"merge_{name.replace('-', '_')}": (
            f"adapters: 'Δ42_poetic'\nchecks:\n  - kind: merge_equivalence\n"
            f"    merged_model: {tmp_path / name}\n    threshold: 0.001\n")})
        result = pytester.runpytest(str(suite), "--adapter", str(demo_adapters), "-rA",
                                    "-p", "no:cacheprovider")
        assert outcome_of(result, "merge_equivalence[Δ42_poetic]") == expected, result.stdout.str()


def generated_count(result: pytest.RunResult) -> int:
    match = re.search(r"scenelora: generated (\d+) new samples, reused (\d+)", result.stdout.str())
    return int(match.group(1)) if match else 0


def test_warm_reruns_generate_nothing_and_one_changed_byte_regenerates_one_adapter(
        pytester, demo_adapters, tmp_path, fresh_home) -> None:
    fresh_home()  # a fresh results cache, the same base
    pair = tmp_path / "pair"
    pair.mkdir()
    for role in ("logic", "poetic"):
        shutil.copy(demo_adapters / f"Δ42_{role}.safetensors", pair)
    cold = run_suite(pytester, "scene_field.yaml", pair, "-k", "scene_holds")
    warm = run_suite(pytester, "scene_field.yaml", pair, "-k", "scene_holds")
    assert generated_count(cold) > 0 and generated_count(warm) == 0
    first_b = sorted_first_b(pair / "Δ42_poetic.safetensors")

    def nudge(key: str, value):
        if key != first_b:
            return value
        value = value.clone()
        value.view(-1)[0] += 0.01  # one changed value: a different adapter
        return value

    _rewrite(pair / "Δ42_poetic.safetensors", pair / "Δ42_poetic.safetensors", transform=nudge)
    changed = run_suite(pytester, "scene_field.yaml", pair, "-k", "scene_holds")
    assert generated_count(changed) == _samples_per_adapter()  # only Δ42_poetic's rows; base reused


def sorted_first_b(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return sorted(k for k in fh.keys() if "lora_B" in k)[0]  # noqa: SIM118 - safe_open has no __iter__


def _samples_per_adapter() -> int:
    from pytest_scenelora.suite import load_suite

    spec = next(c for c in load_suite(SUITES / "scene_field.yaml").checks if c.kind == "scene_holds")
    return spec["samples"]


def test_xdist_gives_the_verdicts_of_one_process(pytester, demo_adapters, tmp_path, fresh_home) -> None:
    """Each run from an empty results cache, so that under -n 2 the workers really share
    the work (the register references are embedded half by each) and still agree.

    Agree as far as floats allow: under -n 2 other rows share a sample's batch and the
    encoder runs on one thread instead of two, so a sample may part at a near-tie (see
    ``near_ties.py``), which moves a success rate by one sample (1/48 here). Every verdict
    is the same, and nearly every score is to 1e-5."""
    scores, statuses = {}, {}
    for workers in ("0", "2"):
        xml = tmp_path / f"n{workers}.xml"
        fresh_home(f"home-{workers}")
        for suite in ("scene_field.yaml", "registers.yaml"):
            shutil.copy(SUITES / suite, pytester.path / suite)
        result = pytester.runpytest_subprocess("scene_field.yaml", "registers.yaml", "--adapter",
                                               str(demo_adapters), "-n", workers, f"--junitxml={xml}",
                                               "-p", "no:cacheprovider")
        assert result.ret in (0, 1), result.stdout.str()
        verdicts = {
            case.get("name"): json.loads(prop.get("value"))
            for case in ET.parse(xml).getroot().iter("testcase")
            for prop in case.iter("property") if prop.get("name") == "scenelora_verdict"
        }
        scores[workers] = {name: v["score"] for name, v in verdicts.items()}
        statuses[workers] = {name: v["status"] for name, v in verdicts.items()}
    assert scores["0"] and statuses["0"] == statuses["2"]
    assert scores["0"].keys() == scores["2"].keys()
    apart = {name: (a, scores["2"][name]) for name, a in scores["0"].items() if abs(a - scores["2"][name]) > 1e-5}
    assert all(abs(a - b) <= 0.05 for a, b in apart.values()), apart
    assert len(apart) <= max(1, len(scores["0"]) // 5), apart


def test_the_demo_runs_inside_a_project_with_strict_pytest_settings(demo_adapters, tmp_path) -> None:
    """`scenelora demo` (the README's main job, here on one check) runs the shipped suites
    without picking up the configuration of the directory it is started in."""
    import os
    import subprocess
    import sys

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nfilterwarnings = ["error"]\ntestpaths = ["nowhere"]\n'
        'addopts = "--strict-config -x"\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest_scenelora.cli.main", "demo", "--out", str(tmp_path / "voices"),
         "--", "-k", "scene_holds"],
        cwd=project, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(r"4 passed, \d+ deselected", result.stdout), result.stdout
    assert "Δ42_poetic" in result.stdout and "reused from the cache" in result.stdout
