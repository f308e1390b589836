"""``pytest --adapter X.safetensors`` in a project without suites, and ``scenelora init``.

The command the product is named for must do something in an empty project: run the
shipped suites, saying so; where paths were named, it adds nothing and says how.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def test_no_suite_in_the_project_runs_the_shipped_suites_and_says_so(
        pytester: pytest.Pytester, make_adapter, tiny_base_dir: Path) -> None:
    adapter = make_adapter("Δ42_poetic", seed=5)
    result = pytester.runpytest("--collect-only", "-q", "--adapter", str(adapter), "--base-model", str(tiny_base_dir))
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    for name in ("scene_field.yaml::adapter_active[Δ42_poetic]", "registers.yaml::registers_unpack[Δ42_poetic]",
                 "topic_shift.yaml::", "unseen_scenes.yaml::"):
        assert name in out, name
    assert "suites/registers.yaml::registers_unpack[Δ42_poetic]" in out
    result.stdout.fnmatch_lines(["scenelora: no test in this project: running the 4 shipped suites "
                                 "(registers.yaml, scene_field.yaml, topic_shift.yaml, unseen_scenes.yaml, in *) "
                                 "on the adapters given; `scenelora init` copies them here to edit"])


def test_the_shipped_suite_items_run_and_k_selects_among_them(
        pytester: pytest.Pytester, make_adapter, tiny_base_dir: Path) -> None:
    adapter = make_adapter("Δ42_poetic", seed=5)
    result = pytester.runpytest("-p", "no:cacheprovider", "--adapter", str(adapter), "--base-model", str(tiny_base_dir),
                                "-k", "adapter_active")
    result.assert_outcomes(passed=1, deselected=len(["scene_holds", "merge_equivalence", "registers", "topic",
                                                     "unseen"]))
    result.stdout.fnmatch_lines(["scenelora: no test in this project: running the 4 shipped suites*"])


@pytest.mark.parametrize("named", [True, False], ids=["a path named", "tests of its own"])
def test_a_project_with_tests_of_its_own_gets_nothing_added_and_a_line_saying_how(
        pytester: pytest.Pytester, make_adapter, tiny_base_dir: Path, named: bool) -> None:
    adapter = make_adapter("Δ42_poetic", seed=5)
    pytester.makepyfile(test_mine="def test_mine(): pass")
    paths = ["test_mine.py"] if named else []
    result = pytester.runpytest(*paths, "--adapter", str(adapter), "--base-model", str(tiny_base_dir))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["scenelora: no suite was collected; the shipped suites (*) run with "
                                 "`pytest --pyargs pytest_scenelora.suites --adapter ...`, and `scenelora init` "
                                 "copies them into this project to edit"])


def test_without_adapters_nothing_is_added(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mine="def test_mine(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "shipped" not in result.stdout.str()


def test_a_project_with_its_own_suite_runs_only_that(pytester: pytest.Pytester, make_adapter, tiny_base_dir) -> None:
    adapter = make_adapter("Δ42_poetic", seed=5)
    pytester.makefile(".yaml", mine="checks:\n  - kind: adapter_active\n    threshold: 0.005\n")
    result = pytester.runpytest("--collect-only", "-q", "--adapter", str(adapter), "--base-model", str(tiny_base_dir))
    out = result.stdout.str()
    assert "mine.yaml::adapter_active[Δ42_poetic]" in out
    assert "registers.yaml" not in out and "shipped" not in out


def test_init_copies_suites_and_world_and_configures_pytest(tmp_path: Path, make_adapter, tiny_base_dir,
                                                            pytester: pytest.Pytester, capsys) -> None:
    from pytest_scenelora.cli.main import main
    from pytest_scenelora.scenes import load_world
    from pytest_scenelora.suite import load_suite

    project = pytester.path
    assert main(["init", str(project), "--base-model", str(tiny_base_dir)]) == 0
    for name in ("scenes.yaml", "topics.yaml", "registers.yaml"):
        assert (project / "scenelora" / name).is_file()
    suites = sorted((project / "suites").glob("*.yaml"))
    assert [p.name for p in suites] == ["registers.yaml", "scene_field.yaml", "topic_shift.yaml", "unseen_scenes.yaml"]
    for path in suites:
        suite = load_suite(path)
        assert suite.scenes == project / "scenelora" / "scenes.yaml"
        load_world(suite.scenes, suite.topics, suite.registers)
    ini = (project / "pytest.ini").read_text()
    assert f"scenelora_base_model = {tiny_base_dir}" in ini and "testpaths = suites" in ini
    # an edit of the copied world is what the suites now test against
    adapter = make_adapter("Δ42_poetic", seed=5)
    result = pytester.runpytest("--collect-only", "-q", "--adapter", str(adapter))
    assert "suites/registers.yaml::registers_unpack[Δ42_poetic]" in result.stdout.str()
    assert "shipped" not in result.stdout.str()
    capsys.readouterr()
    # a second init refuses to overwrite; --force does
    assert main(["init", str(project)]) == 2
    assert "exists (7 of the 7 files init writes do); pass --force" in capsys.readouterr().err
    assert main(["init", str(project), "--force"]) == 0


def test_init_in_a_configured_project_prints_the_lines_to_add(tmp_path: Path, capsys) -> None:
    from pytest_scenelora.cli.main import main

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert main(["init", str(tmp_path), "--base-model", "smollm2-135m"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "pytest.ini").exists()
    assert "pyproject.toml configures pytest already; add to it:" in out
    assert 'scenelora_base_model = "smollm2-135m"' in out
    assert (tmp_path / "pyproject.toml").read_text() == "[project]\nname = 'x'\n"
