"""Suite files as pytest collects them: node ids, selection, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

SHIPPED = Path(__file__).parent.parent / "suites"


@pytest.fixture
def voices(make_adapter, tmp_path: Path) -> Path:
    folder = tmp_path / "voices"
    folder.mkdir()
    for seed, role in enumerate(("logic", "poetic")):
        make_adapter(f"Δ42_{role}", seed=seed, directory=folder)
    make_adapter("Δ07_body", seed=5, directory=folder)
    return folder


def collect(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("--collect-only", "-q", *args)


def test_shipped_suites_collect_one_item_per_check_and_adapter(pytester, voices) -> None:
    for suite in SHIPPED.glob("*.yaml"):
        pytester.path.joinpath(suite.name).write_text(suite.read_text(encoding="utf-8"), encoding="utf-8")
    result = collect(pytester, "--adapter", str(voices))
    result.stdout.fnmatch_lines([
        "*/registers.yaml::registers_unpack[[]Δ42_logic[]]",
        "*/registers.yaml::registers_unpack[[]Δ42_poetic[]]",
        "*/scene_field.yaml::scene_holds[[]Δ42_poetic[]]",
        "*/topic_shift.yaml::style_survives_topic_shift[[]Δ42_logic[]]",
        "*/unseen_scenes.yaml::unseen_scenes[[]Δ42_poetic[]]",
    ])
    assert "Δ07_body" not in result.stdout.str()  # the suites select Δ42_* only
    selected = pytester.runpytest("--collect-only", "-q", "--adapter", str(voices), "-k", "scene_holds and poetic")
    selected.stdout.fnmatch_lines(["*/scene_field.yaml::scene_holds[[]Δ42_poetic[]]", "*1/12 tests collected*"])


def test_unrelated_yaml_is_never_collected(pytester, voices) -> None:
    pytester.path.joinpath(".github", "workflows").mkdir(parents=True)
    pytester.path.joinpath(".github/workflows/ci.yml").write_text("on: push\njobs:\n  test:\n    runs-on: x\n")
    pytester.path.joinpath("config.yaml").write_text("checks_enabled: true\nname: x\n")
    result = collect(pytester, "--adapter", str(voices), ".")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_suite_matching_no_given_adapter_is_skipped_with_a_reason(pytester, voices) -> None:
    pytester.makefile(".yaml", only_ninety_nine="adapters: 'Δ99_*'\nchecks:\n  - kind: scene_holds\n")
    result = pytester.runpytest("-rs", "--adapter", str(voices))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no adapter given matches 'Δ99_*' (given: Δ07_body, Δ42_logic, Δ42_poetic)*"])


BAD_SUITES = {
    "bad_yaml": ("checks:\n  - kind: scene_holds\n    samples: [1, 2\n", 3, "invalid YAML"),
    "unknown_kind": ("checks:\n  - kind: scene_hold\n", 2, "unknown check kind 'scene_hold'; did you mean 'scene_holds'?"),
    "no_kind": ("checks:\n  - samples: 3\n", 2, "a check has no 'kind'"),
    "unknown_key": ("checks:\n  - kind: scene_holds\n    sample: 3\n", 3, "unknown key 'sample' in check 'scene_holds'; did you mean 'samples'?"),
    "threshold_range": ("checks:\n  - kind: registers_unpack\n    threshold: 1.5\n", 3,
                        "check 'registers_unpack' 'threshold' is 1.5, outside -1..1"),
    "not_a_number": ("checks:\n  - kind: scene_holds\n    samples: many\n", 3,
                     "check 'scene_holds' 'samples' must be a whole number, not 'many'; write `samples: 12`"),
    "unknown_scene": ("checks:\n  - kind: scene_holds\n    scene: Δ43\n", 3,
                      "check 'scene_holds': unknown scene 'Δ43' in 'scene'; did you mean"),
    "unknown_topic": ("checks:\n  - kind: style_survives_topic_shift\n    topics: [harbor]\n", 3,
                      "check 'style_survives_topic_shift': unknown topic 'harbor' in 'topics'; "
                      "did you mean 'harbour'?"),
    "empty_checks": ("suite: nothing\nchecks: []\n", 2, "'checks' must be a non-empty list"),
    "glob_matches_nothing": ("adapters: 'Δ99_*'\nadapter_dir: voices\nchecks:\n  - kind: scene_holds\n", 1,
                             "adapters 'Δ99_*' matches no adapter in"),
}


@pytest.mark.parametrize("name", sorted(BAD_SUITES))
def test_every_suite_error_is_one_line_with_path_and_line(pytester, voices, name: str) -> None:
    text, line, words = BAD_SUITES[name]
    (pytester.path / "voices").symlink_to(voices)
    path = pytester.makefile(".yaml", **{name: text})
    result = pytester.runpytest()  # no --adapter: the glob case uses the suite's adapter_dir
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    assert f"{path}:{line}: {words}" in output, output
    assert "Traceback" not in output and "def " not in output


def test_suite_errors_are_reported_in_scenes_files_too(pytester, voices) -> None:
    pytester.makefile(".yaml", scenes="scenes:\n  - id: Δ1\n    core: x\n")
    path = pytester.makefile(".yaml", suite="scenes: scenes.yaml\nchecks:\n  - kind: scene_holds\n")
    result = pytester.runpytest("--adapter", str(voices))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{path.parent / 'scenes.yaml'}:2: a scene has no 'motifs'*"])
