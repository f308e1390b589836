"""A check kind of a project's own: the README's ``length_band`` example, run as it is.

The conftest is the README's code block, read from the README (so the two cannot drift),
and runs on the tiny base with a random adapter: a band every sample meets passes, a
band none meets fails, a bad parameter is a ``path:line`` error, and a band that stops
being met regresses against a stored baseline.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_example() -> str:
    """The first ``python`` block after the README's "Writing a check kind" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Writing a check kind\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's 'Writing a check kind' section has no python block"
    return match.group(1)


def suite(min_words: int | str, max_words: int, threshold: float = 0.5) -> str:
    return ("scorer: char-ngram\ngeneration:\n  max_new_tokens: 8\nchecks:\n  - kind: length_band\n"
            f"    samples: 8\n    min_words: {min_words}\n    max_words: {max_words}\n"
            f"    threshold: {threshold}\n")


@pytest.fixture
def project(pytester: pytest.Pytester, make_adapter, tmp_path: Path) -> Path:
    pytester.makeconftest(readme_example())
    voices = tmp_path / "voices"
    voices.mkdir()
    make_adapter("Δ42_poetic", seed=21, directory=voices)
    return voices


def run(pytester: pytest.Pytester, voices: Path, tiny_base_dir: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-rA", f"--rootdir={pytester.path}", f"--adapter={voices}",
                              "--base-model", str(tiny_base_dir), "--device", "cpu", *args)


def test_the_readme_kind_passes_a_band_every_sample_meets(pytester, project, tiny_base_dir, tmp_path) -> None:
    pytester.makefile(".yaml", suite=suite(0, 1000))
    report = tmp_path / "results.json"
    result = run(pytester, project, tiny_base_dir, f"--scenelora-json={report}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PASSED suite.yaml::length_band[[]Δ42_poetic[]]*"])
    [record] = json.loads(report.read_text(encoding="utf-8"))["results"]
    assert record["kind"] == "length_band" and record["tolerance"] == 0.05
    verdict = record["verdict"]
    assert verdict["check"] == "length_band" and verdict["score"] == 1.0 and verdict["n"] == 8
    assert verdict["ci_low"] < 1.0  # a Wilson interval on a success rate


def test_the_readme_kind_fails_a_band_no_sample_meets(pytester, project, tiny_base_dir) -> None:
    pytester.makefile(".yaml", suite=suite(500, 1000))
    result = run(pytester, project, tiny_base_dir)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "length_band[Δ42_poetic]: FAIL" in out and "Traceback" not in out, out


def test_a_bad_parameter_of_the_readme_kind_is_a_path_line_error(pytester, project, tiny_base_dir) -> None:
    path = pytester.makefile(".yaml", suite=suite(0, -3))
    result = run(pytester, project, tiny_base_dir)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert (f"{path}:8: check 'length_band' 'max_words' is -3, outside 1..1000 (most words a sample may "
            "have); write e.g. `max_words: 60`") in out, out
    pytester.makefile(".yaml", suite=suite("many", 10))
    result = run(pytester, project, tiny_base_dir)
    assert f"{path}:7: check 'length_band' 'min_words' must be a whole number, not 'many'" in result.stdout.str()


def test_the_readme_kind_regresses_against_its_baseline(pytester, project, tiny_base_dir, tmp_path) -> None:
    baseline = tmp_path / "baseline.json"
    pytester.makefile(".yaml", suite=suite(0, 1000, threshold=0.0))
    stored = run(pytester, project, tiny_base_dir, f"--scenelora-baseline={baseline}",
                 "--scenelora-update-baseline")
    stored.assert_outcomes(passed=1)
    [record] = json.loads(baseline.read_text(encoding="utf-8"))["results"]
    assert record["id"] == "suite.yaml::length_band[Δ42_poetic]" and record["verdict"]["score"] == 1.0

    pytester.makefile(".yaml", suite=suite(500, 1000, threshold=0.0))  # the verdict passes at 0.0
    result = run(pytester, project, tiny_base_dir, f"--scenelora-baseline={baseline}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "regressed" in out and "length_band[Δ42_poetic]" in out, out


def test_a_kind_that_reuses_a_shipped_name_is_a_collection_error(pytester, project, tiny_base_dir) -> None:
    pytester.makeconftest(readme_example().replace('name="length_band"', 'name="scene_holds"'))
    pytester.makefile(".yaml", suite="checks:\n  - kind: scene_holds\n")
    result = run(pytester, project, tiny_base_dir)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "check kind 'scene_holds' is registered twice; give one of them another name" in out, out
    assert "INTERNALERROR" not in out


def test_a_kind_with_a_parameter_of_no_known_type_is_a_collection_error(pytester, project, tiny_base_dir) -> None:
    pytester.makeconftest(readme_example().replace('"min_words": Param(int, 1, 0, 1000,',
                                                   '"min_words": Param(dict, 1, 0, 1000,'))
    pytester.makefile(".yaml", suite=suite(0, 10))
    result = run(pytester, project, tiny_base_dir)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "check kind 'length_band': parameter 'min_words' must be a Param of int, float, str or list" in out
    assert "INTERNALERROR" not in out


def test_the_check_kinds_reach_the_runner_only_through_the_context() -> None:
    """No module of ``checks/`` imports the runner (or the session): a kind, shipped or a
    project's, has the public :class:`CheckContext` and nothing else of the run."""
    for path in sorted((ROOT / "pytest_scenelora" / "checks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert module.rpartition(".")[2] not in ("runner", "session", "plugin", "items"), \
                    f"{path.name} imports {module}"
