"""Scenes, topics and registers: the YAML files that say what a voice should say.

Every loader here reads YAML with a ``SafeLoader`` that records the line of each mapping
and key (as pytest-mypy-plugins' ``SafeLineLoader``), so that each error is one line,
``path:line: what is wrong, and what to write instead``, with no traceback. Only yaml is
imported: the plugin loads these files while collecting, before any model is needed.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import os
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import shipped
from .errors import SceneloraError
from .prompts import InputMode


class SceneFileError(SceneloraError, ValueError):
    """A scenes, topics or registers file is malformed; the message is ``path:line: ...``."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {message}")


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


# ------------------------------------------------------------------------------ reading


class _Map(dict):
    """A YAML mapping that remembers its own line and the line of each key."""

    line: int
    key_lines: dict[Any, int]


class _Seq(list):
    line: int
    item_lines: list[int]


#: The most values a YAML document may stand for once its aliases are expanded. PyYAML
#: builds an alias as a reference to the anchored value, so loading stays small, but
#: anything that walks the result (a message quoting it, ``str()`` of a list) walks every
#: repetition: nine levels of nine aliases (the "billion laughs") stand for 387 million
#: values from a few hundred bytes. Real scenes, topics, registers and suites are far below.
MAX_EXPANDED_VALUES = 200_000


def _expanded_size_check(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it beyond :data:`MAX_EXPANDED_VALUES`.

    Each node's expanded size is computed once (children before parents, without
    recursion), so the check costs one pass over the nodes as written. The error names
    the line of the outermost value that alone expands too far.
    """
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    while stack:
        node, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            size[id(node)] = min(1 + sum(size.get(id(c), 1) for c in children(node)),
                                 MAX_EXPANDED_VALUES + 1)
            continue
        if id(node) in size or id(node) in open_nodes:  # shared (an alias) or recursive
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))
    if size[id(root)] <= MAX_EXPANDED_VALUES:
        return
    culprit = root
    while True:
        bigger = [c for c in children(culprit) if size.get(id(c), 1) > MAX_EXPANDED_VALUES]
        if not bigger:
            break
        culprit = bigger[0]
    raise _LocatedError(culprit.start_mark.line + 1,
                        f"this value stands for more than {MAX_EXPANDED_VALUES:,} values once its "
                        "aliases (*name) are expanded; write the values out, or repeat fewer aliases")


class LineLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings and sequences know their line (1-based), and that
    refuses documents whose aliases expand too far (:func:`_expanded_size_check`)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size_check(node)
        return yaml.constructor.SafeConstructor.construct_document(self, node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> _Map:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark
            )
        self.flatten_mapping(node)
        result = _Map()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise _LocatedError(line, f"a key must be a plain word, not {type(key).__name__}")
            if key in result:
                raise _LocatedError(
                    line, f"duplicate key {excerpt(key)} (first on line {result.key_lines[key]}); "
                    "keep one of them",
                )
            result[key] = self.construct_object(value_node, deep=deep)
            result.key_lines[key] = line
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> _Seq:
        result = _Seq(self.construct_object(child, deep=deep) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


def _construct_map(loader: LineLoader, node: yaml.MappingNode) -> _Map:
    return loader.construct_mapping(node, deep=True)


def _construct_seq(loader: LineLoader, node: yaml.SequenceNode) -> _Seq:
    return loader.construct_sequence(node, deep=True)


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)

if getattr(yaml, "__with_libyaml__", False):

    class FastLineLoader(yaml.CSafeLoader):
        """:class:`LineLoader` on libyaml's parser: the same tree and lines, an order of
        magnitude faster (the shipped files are read by every suite file and every xdist worker)."""

        construct_document = LineLoader.construct_document
        construct_mapping = LineLoader.construct_mapping
        construct_sequence = LineLoader.construct_sequence

    FastLineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
    FastLineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)
else:  # pragma: no cover - PyYAML built without libyaml
    FastLineLoader = LineLoader


class _LocatedError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def load_yaml(path: Path | str) -> Any:
    """Parse *path* with :class:`LineLoader`; syntax errors become ``path:line: ...``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SceneFileError(path, None, "no such file; check the path") from None
    except UnicodeDecodeError as exc:
        raise SceneFileError(path, None, f"not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    # libyaml is fast; on any error, parse again with the pure-Python loader, whose
    # messages and marks the errors below quote
    with contextlib.suppress(yaml.YAMLError, _LocatedError, RecursionError, ValueError, OverflowError):
        return yaml.load(text, Loader=FastLineLoader)
    try:
        return yaml.load(text, Loader=LineLoader)  # LineLoader is a SafeLoader
    except RecursionError:
        raise SceneFileError(path, None, "values are nested too deeply to read; write a flatter "
                             "file") from None
    except (ValueError, OverflowError) as exc:  # a scalar PyYAML cannot build: a 5000-digit int, a bad date
        what = " ".join(str(exc).split(";")[0].split())[:160]
        raise SceneFileError(path, None, f"invalid YAML value: {what}; write it as quoted text or fix "
                             "it") from None
    except _LocatedError as exc:
        raise SceneFileError(path, exc.line, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "invalid YAML"
        raise SceneFileError(path, line, f"invalid YAML: {what}; check the indentation and quoting") from None
    except yaml.YAMLError as exc:
        raise SceneFileError(path, None, f"invalid YAML: {exc}") from None


class _Reader:
    """Validation helpers that know the file, so each check is one short call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int | None, message: str) -> SceneFileError:
        return SceneFileError(self.path, line, message)

    def line_of(self, mapping: Any, key: Any = None) -> int | None:
        if isinstance(mapping, _Map):
            if key is not None and key in mapping.key_lines:
                return mapping.key_lines[key]
            return mapping.line
        return getattr(mapping, "line", None)

    def mapping(self, value: Any, what: str, line: int | None, example: str) -> _Map:
        if not isinstance(value, dict):
            raise self.fail(line, f"{what} must be a mapping, not {_kind(value)}; write {example}")
        return value  # type: ignore[return-value]

    def keys(self, mapping: _Map, what: str, required: Iterable[str], optional: Iterable[str] = ()) -> None:
        required = list(required)
        allowed = [*required, *optional]
        for key in mapping:
            if key not in allowed:
                close = close_match(key, allowed)
                hint = f"did you mean {close!r}?" if close else f"the keys are {', '.join(allowed)}"
                raise self.fail(self.line_of(mapping, key), f"unknown key {excerpt(key)} in {what}; {hint}")
        for key in required:
            if key not in mapping:
                raise self.fail(self.line_of(mapping), f"{what} has no {key!r}; add `{key}: ...`")

    def text(self, mapping: _Map, key: str, what: str) -> str:
        value = mapping.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # `id: 42` is a fine id
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                self.line_of(mapping, key),
                f"{what} {key!r} must be non-empty text, not {_kind(value)}; write `{key}: some text`",
            )
        return value.strip()

    def words(self, mapping: _Map, key: str, what: str, *, required: bool = True) -> tuple[str, ...]:
        value = mapping.get(key)
        if value is None and not required:
            return ()
        line = self.line_of(mapping, key)
        if not isinstance(value, list) or not value:
            raise self.fail(line, f"{what} {key!r} must be a non-empty list, not {_kind(value)}; "
                            f"write `{key}: [word, another word]`")
        out = []
        for i, item in enumerate(value):
            item_line = value.item_lines[i] if isinstance(value, _Seq) else line
            if not isinstance(item, str) or not item.strip():
                raise self.fail(item_line, f"{what} {key!r} item {i + 1} must be non-empty text, "
                                f"not {_kind(item)}")
            out.append(item.strip())
        return tuple(out)

    def choice(self, mapping: _Map, key: str, what: str, enum_type: type[enum.Enum], default: Any) -> Any:
        if key not in mapping:
            return default
        value = mapping[key]
        try:
            return enum_type(value)
        except ValueError:
            allowed = " or ".join(repr(m.value) for m in enum_type)
            raise self.fail(self.line_of(mapping, key),
                            f"{what} {key!r} is {excerpt(value)}; write {allowed}") from None

    def items(self, root: Any, key: str, example: str) -> list[tuple[int | None, _Map]]:
        if not isinstance(root, dict):
            raise self.fail(self.line_of(root) or 1,
                            f"the file must be a mapping with a {key!r} list, not {_kind(root)}; "
                            f"write `{key}:` followed by `  - {example}`")
        if key not in root:
            raise self.fail(root.line if isinstance(root, _Map) else 1,
                            f"no {key!r} list; add `{key}:` followed by `  - {example}`")
        value = root[key]
        line = self.line_of(root, key)
        if not isinstance(value, list) or not value:
            raise self.fail(line, f"{key!r} must be a non-empty list, not {_kind(value)}; "
                            f"write `  - {example}` under it")
        out = []
        for i, item in enumerate(value):
            item_line = value.item_lines[i] if isinstance(value, _Seq) else line
            if not isinstance(item, dict):
                raise self.fail(item_line, f"each entry of {key!r} must be a mapping "
                                f"(`- {example}`), not {_kind(item)}")
            out.append((item_line, item))
        return out

    def unique(self, seen: dict[str, int | None], value: str, what: str, line: int | None) -> None:
        if value in seen:
            raise self.fail(line, f"duplicate {what} {excerpt(value)} (first on line {seen[value]}); "
                            "give each a distinct id")
        seen[value] = line


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}" if len(value) < 40 else "text"
    return f"{type(value).__name__} {excerpt(value)}"


class _ShortRepr(reprlib.Repr):
    """``repr`` that stops early: a few items of each container, two levels deep, short
    strings. Its cost is bounded whatever the value holds, so a value built by a chain of
    YAML aliases (each level repeating the one before) cannot blow up a message."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 2, 4, 4, 4, 4
        self.maxstring, self.maxother, self.maxlong = 40, 40, 40

    def repr__Map(self, x: dict, level: int) -> str:  # reprlib's naming: repr_<type name>
        return self.repr_dict(x, level)

    def repr__Seq(self, x: list, level: int) -> str:
        return self.repr_list(x, level)


_short_repr = _ShortRepr()


def excerpt(value: Any, limit: int = 60) -> str:
    """*value* as ``repr`` shows it, cut to at most *limit* characters: what an error
    message quotes of anything read from a file."""
    if isinstance(value, str):  # a string keeps its quotes and escapes, cut inside them
        return repr(value if len(value) <= limit else value[: limit - 1] + "…")
    text = _short_repr.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listing(names: Iterable[Any], most: int = 12) -> str:
    """Names joined by commas, the first *most* of them (a file may hold thousands)."""
    names = list(names)
    shown = ", ".join(excerpt(n)[1:-1] if isinstance(n, str) else excerpt(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def close_match(value: Any, choices: Iterable[str]) -> str | None:
    """The choice *value* is most likely a typo of, if any (short values only: comparing
    long text costs time, and a typo is short)."""
    if not isinstance(value, str | int | float) or len(str(value)) > 100:
        return None
    found = difflib.get_close_matches(str(value), list(choices), n=1)
    return found[0] if found else None


def _resolve(path: str | os.PathLike[str] | None, default: Path) -> Path:
    return Path(path) if path is not None else default


# ------------------------------------------------------------------------------ loaders


def load_scenes(path: str | os.PathLike[str] | None = None) -> SceneSet:
    """Read a scenes file (default: the shipped ``scenes.yaml``)."""
    path = _resolve(path, shipped.scenes_file())
    reader = _Reader(path)
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


def _read_structure(reader: _Reader, root: Any) -> SceneStructure:
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


def _read_scene_fields(reader: _Reader, item: _Map, structure: SceneStructure,
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
                              f"not {_kind(word)}")
        fields[str(name)] = str(word).strip()
    return fields


def load_topics(path: str | os.PathLike[str] | None = None) -> dict[str, Topic]:
    """Read a topics file (default: the shipped ``topics.yaml``), by id in file order."""
    path = _resolve(path, shipped.topics_file())
    reader = _Reader(path)
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
    reader = _Reader(path)
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
            ref_line = refs.item_lines[i] if isinstance(refs, _Seq) else refs_line
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
