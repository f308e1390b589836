"""YAML read for people: every mapping, key and list item remembers its line, so each
error is one line, ``path:line: what is wrong, and what to write instead``.

:class:`LineLoader` is a ``SafeLoader`` that records lines (as pytest-mypy-plugins'
``SafeLineLoader``); :func:`load_yaml` refuses what no real file needs (alias bombs,
nesting too deep, values PyYAML cannot build) in one line; :class:`Reader` holds the
checks the scenes, topics, registers and suite loaders share.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .errors import SceneFileError


class LocatedMap(dict):
    """A YAML mapping that remembers its own line and the line of each key."""

    line: int
    key_lines: dict[Any, int]


class LocatedSeq(list):
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

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LocatedMap:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark
            )
        self.flatten_mapping(node)
        result = LocatedMap()
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

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LocatedSeq:
        result = LocatedSeq(self.construct_object(child, deep=deep) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


def _construct_map(loader: LineLoader, node: yaml.MappingNode) -> LocatedMap:
    return loader.construct_mapping(node, deep=True)


def _construct_seq(loader: LineLoader, node: yaml.SequenceNode) -> LocatedSeq:
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


class Reader:
    """Validation helpers that know the file, so each check is one short call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int | None, message: str) -> SceneFileError:
        return SceneFileError(self.path, line, message)

    def line_of(self, mapping: Any, key: Any = None) -> int | None:
        if isinstance(mapping, LocatedMap):
            if key is not None and key in mapping.key_lines:
                return mapping.key_lines[key]
            return mapping.line
        return getattr(mapping, "line", None)

    def mapping(self, value: Any, what: str, line: int | None, example: str) -> LocatedMap:
        if not isinstance(value, dict):
            raise self.fail(line, f"{what} must be a mapping, not {kind_name(value)}; write {example}")
        return value  # type: ignore[return-value]

    def keys(self, mapping: LocatedMap, what: str, required: Iterable[str],
             optional: Iterable[str] = ()) -> None:
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

    def text(self, mapping: LocatedMap, key: str, what: str) -> str:
        value = mapping.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # `id: 42` is a fine id
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                self.line_of(mapping, key),
                f"{what} {key!r} must be non-empty text, not {kind_name(value)}; write `{key}: some text`",
            )
        return value.strip()

    def words(self, mapping: LocatedMap, key: str, what: str, *, required: bool = True) -> tuple[str, ...]:
        value = mapping.get(key)
        if value is None and not required:
            return ()
        line = self.line_of(mapping, key)
        if not isinstance(value, list) or not value:
            raise self.fail(line, f"{what} {key!r} must be a non-empty list, not {kind_name(value)}; "
                            f"write `{key}: [word, another word]`")
        out = []
        for i, item in enumerate(value):
            item_line = value.item_lines[i] if isinstance(value, LocatedSeq) else line
            if not isinstance(item, str) or not item.strip():
                raise self.fail(item_line, f"{what} {key!r} item {i + 1} must be non-empty text, "
                                f"not {kind_name(item)}")
            out.append(item.strip())
        return tuple(out)

    def choice(self, mapping: LocatedMap, key: str, what: str, enum_type: type[enum.Enum],
               default: Any) -> Any:
        if key not in mapping:
            return default
        value = mapping[key]
        try:
            return enum_type(value)
        except ValueError:
            allowed = " or ".join(repr(m.value) for m in enum_type)
            raise self.fail(self.line_of(mapping, key),
                            f"{what} {key!r} is {excerpt(value)}; write {allowed}") from None

    def items(self, root: Any, key: str, example: str) -> list[tuple[int | None, LocatedMap]]:
        if not isinstance(root, dict):
            raise self.fail(self.line_of(root) or 1,
                            f"the file must be a mapping with a {key!r} list, not {kind_name(root)}; "
                            f"write `{key}:` followed by `  - {example}`")
        if key not in root:
            raise self.fail(root.line if isinstance(root, LocatedMap) else 1,
                            f"no {key!r} list; add `{key}:` followed by `  - {example}`")
        value = root[key]
        line = self.line_of(root, key)
        if not isinstance(value, list) or not value:
            raise self.fail(line, f"{key!r} must be a non-empty list, not {kind_name(value)}; "
                            f"write `  - {example}` under it")
        out = []
        for i, item in enumerate(value):
            item_line = value.item_lines[i] if isinstance(value, LocatedSeq) else line
            if not isinstance(item, dict):
                raise self.fail(item_line, f"each entry of {key!r} must be a mapping "
                                f"(`- {example}`), not {kind_name(item)}")
            out.append((item_line, item))
        return out

    def unique(self, seen: dict[str, int | None], value: str, what: str, line: int | None) -> None:
        if value in seen:
            raise self.fail(line, f"duplicate {what} {excerpt(value)} (first on line {seen[value]}); "
                            "give each a distinct id")
        seen[value] = line


def kind_name(value: Any) -> str:
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

    def repr_LocatedMap(self, x: dict, level: int) -> str:  # reprlib's naming: repr_<type name>
        return self.repr_dict(x, level)

    def repr_LocatedSeq(self, x: list, level: int) -> str:
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
