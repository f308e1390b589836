"""Scenes, topics and registers: the YAML files that say what a voice should say.

Every loader here reads through :mod:`.yamlfile`, so each error is one line,
``path:line: what is wrong, and what to write instead``, with no traceback. Only yaml is
imported: the plugin loads these files while collecting, before any model is needed.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import shipped
from .errors import SceneFileError
from .prompts import InputMode
from .yamlfile import LocatedMap, LocatedSeq, Reader, close_match, excerpt, kind_name, listing, load_yaml


class Split(str, enum.Enum):
    """Whether a scene may appear in training data (``train``) or must not (``unseen``)."""

    TRAIN = "train"
    UNSEEN = "unseen"


@dataclass(frozen=True)
class SceneStructure:
    """The shape every scene shares: its fields and each field's vocabulary.

    Hypothesis draws unseen scenes from these vocabularies, so an unseen scene has the
    same structure as the trained ones without being any of them.
    """

    fields: Mapping[str, tuple[str, ...]]
    core: str = ""  # a template such as "The {figure} {action} the {object} ..."
    extra: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class Scene:
    id: str
    title: str
    core: str
    motifs: tuple[str, ...]
    input: InputMode = InputMode.TOKEN
    split: Split = Split.TRAIN
    fields: Mapping[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class SceneSet:
    """A scenes file: its structure and its scenes, by id, in file order."""

    path: Path
    structure: SceneStructure
    scenes: Mapping[str, Scene]

    def __getitem__(self, scene_id: str) -> Scene:
        try:
            return self.scenes[scene_id]
        except KeyError:
            raise SceneFileError(
                self.path, None,
                f"no scene {excerpt(scene_id)} here; the scenes are {listing(self.scenes)}",
            ) from None

    def __contains__(self, scene_id: object) -> bool:
        return scene_id in self.scenes

    def __iter__(self):
        return iter(self.scenes.values())

    def __len__(self) -> int:
        return len(self.scenes)

    def split(self, which: Split | str) -> list[Scene]:
        which = Split(which)
        return [s for s in self.scenes.values() if s.split is which]


@dataclass(frozen=True)
class Topic:
    id: str
    title: str
    description: str
    words: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Reference:
    """One style exemplar of a register, on one topic (or scene)."""

    topic: str
    text: str
    line: int = 0


@dataclass(frozen=True)
class Register:
    """A voice: its name (``logic``, ``poetic``, ...) and its reference texts."""

    name: str
    description: str
    references: tuple[Reference, ...]
    line: int = 0

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.references]


def _resolve(path: str | os.PathLike[str] | None, default: Path) -> Path:
    return Path(path) if path is not None else default


# ------------------------------------------------------------------------------ loaders


def load_scenes(path: str | os.PathLike[str] | None = None) -> SceneSet:
    """Read a scenes file (default: the shipped ``scenes.yaml``)."""
    path = _resolve(path, shipped.scenes_file())
    reader = Reader(path)
    root = load_yaml(path)
    structure = _read_structure(reader, root)
    scenes: dict[str, Scene] = {}
    seen: dict[str, int | None] = {}
    example = "id: Δ42"
    for line, item in reader.items(root, "scenes", example):
        reader.keys(item, "a scene", ("id", "core", "motifs"),
                    ("title", "fields", "input", "split"))
        scene_id = reader.text(item, "id", "scene")
        if "\n" in scene_id or "/" in scene_id:
            raise reader.fail(reader.line_of(item, "id"), f"scene id {excerpt(scene_id)} cannot name a "
                              "file (it holds a line break or '/'); use an id such as Δ42")
        reader.unique(seen, scene_id, "scene id", reader.line_of(item, "id"))
        fields = _read_scene_fields(reader, item, structure, scene_id)
        scenes[scene_id] = Scene(
            id=scene_id,
            title=reader.text(item, "title", "scene") if "title" in item else scene_id,
            core=reader.text(item, "core", "scene"),
            motifs=reader.words(item, "motifs", "scene"),
            input=reader.choice(item, "input", "scene", InputMode, InputMode.TOKEN),
            split=reader.choice(item, "split", "scene", Split, Split.TRAIN),
            fields=fields,
            line=line or 0,
        )
    return SceneSet(path=path, structure=structure, scenes=scenes)


def _read_structure(reader: Reader, root: Any) -> SceneStructure:
    if not isinstance(root, dict) or "structure" not in root:
        return SceneStructure(fields={})
    line = reader.line_of(root, "structure")
    value = reader.mapping(root["structure"], "'structure'", line,
                           "`structure:` then `  fields:` mapping each field to its words")
    if "fields" not in value:
        raise reader.fail(reader.line_of(value), "'structure' has no 'fields'; add `fields:` "
                          "mapping each field name to its list of words")
    fields_map = reader.mapping(value["fields"], "'structure.fields'",
                                reader.line_of(value, "fields"), "`field: [word, word]` lines")
    fields = {str(name): reader.words(fields_map, name, "structure field") for name in fields_map}
    core = reader.text(value, "core", "structure") if "core" in value else ""
    extra = {k: v for k, v in value.items() if k not in ("fields", "core")}
    return SceneStructure(fields=fields, core=core, extra=extra, line=line or 0)


def _read_scene_fields(reader: Reader, item: LocatedMap, structure: SceneStructure,
                       scene_id: str) -> dict[str, str]:
    if "fields" not in item:
        return {}
    line = reader.line_of(item, "fields")
    value = reader.mapping(item["fields"], f"scene {excerpt(scene_id)} 'fields'", line, "`field: word` lines")
    fields: dict[str, str] = {}
    for name, word in value.items():
        name_line = reader.line_of(value, name)
        if structure.fields and name not in structure.fields:
            close = close_match(name, structure.fields)
            hint = f"did you mean {close!r}?" if close else \
                f"the structure's fields are {listing(structure.fields)}"
            raise reader.fail(name_line, f"scene {excerpt(scene_id)} has field {excerpt(name)}, which the "
                              f"structure does not define; {hint}")
        if isinstance(word, list) and all(isinstance(w, str | int | float) for w in word):
            word = ", ".join(str(w) for w in word)
        if not isinstance(word, str | int | float) or not str(word).strip():
            raise reader.fail(name_line, f"scene {excerpt(scene_id)} field {excerpt(name)} must be text, "
                              f"not {kind_name(word)}")
        fields[str(name)] = str(word).strip()
    return fields


def load_topics(path: str | os.PathLike[str] | None = None) -> dict[str, Topic]:
    """Read a topics file (default: the shipped ``topics.yaml``), by id in file order."""
    path = _resolve(path, shipped.topics_file())
    reader = Reader(path)
    root = load_yaml(path)
    topics: dict[str, Topic] = {}
    seen: dict[str, int | None] = {}
    for line, item in reader.items(root, "topics", "id: harbour"):
        reader.keys(item, "a topic", ("id", "description"), ("title", "words"))
        topic_id = reader.text(item, "id", "topic")
        reader.unique(seen, topic_id, "topic id", reader.line_of(item, "id"))
        topics[topic_id] = Topic(
            id=topic_id,
            title=reader.text(item, "title", "topic") if "title" in item else topic_id,
            description=reader.text(item, "description", "topic"),
            words=reader.words(item, "words", "topic", required=False),
            line=line or 0,
        )
    return topics


def load_registers(
    path: str | os.PathLike[str] | None = None,
    *,
    known_topics: Iterable[str] | None = None,
) -> dict[str, Register]:
    """Read a registers file (default: the shipped ``registers.yaml``), by name.

    With *known_topics* (topic and scene ids), a reference naming anything else is an
    error, so a typo in ``topic:`` cannot silently drop an exemplar from its topic.
    """
    path = _resolve(path, shipped.registers_file())
    reader = Reader(path)
    root = load_yaml(path)
    known = set(known_topics) if known_topics is not None else None
    registers: dict[str, Register] = {}
    seen: dict[str, int | None] = {}
    for line, item in reader.items(root, "registers", "name: poetic"):
        reader.keys(item, "a register", ("name", "references"), ("description",))
        name = reader.text(item, "name", "register")
        reader.unique(seen, name, "register name", reader.line_of(item, "name"))
        refs_line = reader.line_of(item, "references")
        refs = item["references"]
        if not isinstance(refs, list) or not refs:
            raise reader.fail(refs_line, f"register {excerpt(name)} 'references' must be a non-empty list "
                              "of `- {topic: ..., text: ...}`")
        references = []
        for i, ref in enumerate(refs):
            ref_line = refs.item_lines[i] if isinstance(refs, LocatedSeq) else refs_line
            if isinstance(ref, str):
                raise reader.fail(ref_line, f"register {excerpt(name)} reference {i + 1} is bare text; "
                                  "write `- topic: <topic id>` and `  text: ...`")
            ref = reader.mapping(ref, f"register {excerpt(name)} reference {i + 1}", ref_line,
                                 "`- topic: harbour` and `  text: ...`")
            reader.keys(ref, f"register {excerpt(name)} reference", ("topic", "text"))
            topic = reader.text(ref, "topic", "reference")
            if known is not None and topic not in known:
                close = close_match(topic, sorted(known))
                hint = f"did you mean {close!r}?" if close else "use a topic id from topics.yaml"
                raise reader.fail(reader.line_of(ref, "topic"),
                                  f"reference topic {excerpt(topic)} is not a known topic or scene; {hint}")
            references.append(Reference(topic=topic, text=reader.text(ref, "text", "reference"),
                                        line=ref_line or 0))
        registers[name] = Register(
            name=name,
            description=reader.text(item, "description", "register") if "description" in item else "",
            references=tuple(references),
            line=line or 0,
        )
    return registers


@dataclass(frozen=True)
class World:
    """What a suite talks about: its scenes, topics and registers."""

    scenes: SceneSet
    topics: dict[str, Topic]
    registers: dict[str, Register]


def load_world(
    scenes: str | os.PathLike[str] | None = None,
    topics: str | os.PathLike[str] | None = None,
    registers: str | os.PathLike[str] | None = None,
) -> World:
    """A suite's scenes, topics and registers files, each the shipped one where not given.

    The one way a suite's world is read: collection reads it to check the suite's
    references, the runner to run its checks.
    """
    return World(scenes=load_scenes(scenes), topics=load_topics(topics),
                 registers=load_registers(registers))
