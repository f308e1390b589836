"""Scenes, topics and registers files: the shipped ones load, and every mistake in one is
reported as a single ``path:line: what is wrong, and what to write instead``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_scenelora import shipped
from pytest_scenelora.prompts import InputMode
from pytest_scenelora.scenes import (
    SceneFileError,
    Split,
    load_registers,
    load_scenes,
    load_topics,
)

GOOD_SCENES = """\
structure:
  fields:
    figure: [keeper, baker]
    object: [lamp, loaf]
  core: The {figure} holds the {object}.
scenes:
  - id: Δ42
    title: The keeper
    fields: {figure: keeper, object: lamp}
    core: The keeper holds the lamp.
    motifs: [keeper, lamp]
    input: token
    split: train
  - id: Δ71
    core: The baker holds the loaf.
    motifs: [baker, loaf]
    split: unseen
"""


def write(tmp_path: Path, text: str, name: str = "scenes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(loader, path: Path, **kwargs) -> str:
    with pytest.raises(SceneFileError) as caught:
        loader(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_shipped_files_load_and_agree() -> None:
    scenes = load_scenes()
    topics = load_topics()
    registers = load_registers(known_topics=[*topics, *scenes.scenes])
    assert scenes.path == shipped.scenes_file()
    assert "Δ42" in scenes
    assert len(scenes.split(Split.TRAIN)) >= 7
    assert len(scenes.split(Split.UNSEEN)) >= 3
    assert set(registers) >= {"logic", "poetic", "body", "silence"}
    assert all(r.references for r in registers.values())
    for scene in scenes:
        assert set(scene.fields) <= set(scenes.structure.fields)
        assert scene.motifs


def test_a_good_file_reads_into_dataclasses(tmp_path: Path) -> None:
    scenes = load_scenes(write(tmp_path, GOOD_SCENES))
    keeper = scenes["Δ42"]
    assert keeper.input is InputMode.TOKEN
    assert keeper.split is Split.TRAIN
    assert keeper.fields == {"figure": "keeper", "object": "lamp"}
    assert keeper.motifs == ("keeper", "lamp")
    assert keeper.line == 7
    assert scenes["Δ71"].split is Split.UNSEEN
    assert scenes["Δ71"].title == "Δ71"  # the id when no title is given
    assert scenes.structure.fields["object"] == ("lamp", "loaf")
    assert scenes.structure.core == "The {figure} holds the {object}."


@pytest.mark.parametrize(
    ("edit", "line", "expected"),
    [
        (("    input: token", "    input: tokn"), 12, "scene 'input' is 'tokn'; write 'token' or 'fragment'"),
        (("    split: train", "    split: test"), 13, "write 'train' or 'unseen'"),
        (("    motifs: [keeper, lamp]", "    motifs: keeper"), 11, "'motifs' must be a non-empty list"),
        (("    core: The keeper holds the lamp.\n", ""), 7, "a scene has no 'core'; add `core: ...`"),
        (("    title: The keeper", "    titel: The keeper"), 8,
         "unknown key 'titel' in a scene; did you mean 'title'?"),
        (("  - id: Δ71", "  - id: Δ42"), 14, "duplicate scene id 'Δ42' (first on line 7)"),
        (("    fields: {figure: keeper, object: lamp}", "    fields: {figure: keeper, colour: red}"),
         9, "field 'colour', which the structure does not define"),
        (("    core: The baker holds the loaf.", "    core: The baker holds the loaf.\n    core: again"),
         16, "duplicate key 'core' (first on line 15)"),
        (("    motifs: [baker, loaf]", "    motifs: [baker, [loaf]]"), 16, "item 2 must be non-empty text"),
    ],
)
def test_each_mistake_names_its_line(tmp_path: Path, edit: tuple[str, str], line: int, expected: str) -> None:
    old, new = edit
    assert old in GOOD_SCENES
    path = write(tmp_path, GOOD_SCENES.replace(old, new, 1))
    message = error_of(load_scenes, path)
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message


def test_yaml_syntax_errors_are_one_line_with_a_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "scenes:\n  - id: Δ42\n    core: [unclosed\n    motifs: [a]\n")
    message = error_of(load_scenes, path)
    assert message.startswith(f"{path}:")
    assert "invalid YAML" in message


def test_a_file_without_scenes_says_what_to_write(tmp_path: Path) -> None:
    path = write(tmp_path, "structure:\n  fields: {figure: [a]}\n")
    assert error_of(load_scenes, path) == (
        f"{path}:1: no 'scenes' list; add `scenes:` followed by `  - id: Δ42`"
    )
    missing = tmp_path / "absent.yaml"
    assert error_of(load_scenes, missing) == f"{missing}: no such file; check the path"


def test_topics_and_registers_report_lines(tmp_path: Path) -> None:
    topics = write(tmp_path, """\
        topics:
          - id: harbour
            description: A busy harbour.
          - id: forest
            words: [oak]
        """, "topics.yaml")
    message = error_of(load_topics, topics)
    assert message == f"{topics}:4: a topic has no 'description'; add `description: ...`"

    registers = write(tmp_path, """\
        registers:
          - name: poetic
            references:
              - topic: harbour
                text: Salt on the wind.
              - topic: harbor
                text: Gulls.
        """, "registers.yaml")
    assert load_registers(registers)["poetic"].texts == ["Salt on the wind.", "Gulls."]
    message = error_of(load_registers, registers, known_topics=["harbour", "forest"])
    assert message.startswith(f"{registers}:6: reference topic 'harbor' is not a known topic")
    assert "did you mean 'harbour'?" in message
