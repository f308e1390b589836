"""Suite files: declarative YAML that says which checks to run on which adapters.

A suite is recognised by a top-level ``checks:`` line (so a CI workflow or any other YAML
is never collected), read with the line-recording loader of :mod:`.scenes`, and
validated against the schema of each check's kind (:class:`~.checks.kind.CheckKind`: the
shipped kinds, and under pytest those the ``pytest_scenelora_check_kinds`` hook adds).
Every error is one line, ``path:line: what is wrong, and what to write instead``.
Nothing from YAML is ever evaluated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine.chat import PromptFormat
from .errors import SceneFileError
from .specs import CheckSpec, GenerationSpec, Param, Scorer, Suite, SuiteError
from .yamlfile import LocatedMap, Reader, close_match, excerpt, listing, load_yaml

if TYPE_CHECKING:
    from .checks.kind import CheckKind

__all__ = ["CheckSpec", "GenerationSpec", "Param", "Scorer", "Suite", "SuiteError", "check_references",
           "is_suite", "load_suite"]

SUITE_MARKER = re.compile(r"^checks\s*:", re.MULTILINE)


class _SuiteReader(Reader):
    def fail(self, line: int | None, message: str) -> SuiteError:
        return SuiteError(self.path, line, message)


def is_suite(path: Path) -> bool:
    """A YAML file with a top-level ``checks:`` key; read as text, so broken YAML counts."""
    if path.suffix not in (".yaml", ".yml"):
        return False
    try:
        return bool(SUITE_MARKER.search(path.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return False


def _number(reader: Reader, mapping: LocatedMap, key: str, param: Param, what: str) -> Any:
    value = mapping[key]
    line = reader.line_of(mapping, key)
    if param.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise reader.fail(line, f"{what} {key!r} must be a whole number, not {excerpt(value)}; "
                          f"write `{key}: {param.default}`")
    if param.kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise reader.fail(line, f"{what} {key!r} must be a number, not {excerpt(value)}; "
                          f"write `{key}: {param.default}`")
    # NaN compares false with every bound, so it would pass the range check below (a NaN
    # tolerance never regresses; a NaN threshold cannot be written as JSON)
    if isinstance(value, float) and not math.isfinite(value):
        raise reader.fail(line, f"{what} {key!r} is {excerpt(value)}, not a finite number; "
                          f"write e.g. `{key}: {param.default}`")
    if (param.low is not None and value < param.low) or (param.high is not None and value > param.high):
        raise reader.fail(line, f"{what} {key!r} is {excerpt(value)}, outside {param.low:g}..{param.high:g} "
                          f"({param.help}); write e.g. `{key}: {param.default}`")
    return value


def _check(reader: Reader, item: LocatedMap, line: int | None, kinds: dict[str, CheckKind]) -> CheckSpec:
    if "kind" not in item:
        raise reader.fail(line, f"a check has no 'kind'; add `kind: ...`, one of {', '.join(kinds)}")
    kind = item["kind"]
    if not isinstance(kind, str) or kind not in kinds:
        close = close_match(kind, list(kinds)) if isinstance(kind, str) else None
        hint = f"did you mean {close!r}?" if close else f"use one of {', '.join(kinds)}"
        raise reader.fail(reader.line_of(item, "kind"), f"unknown check kind {excerpt(kind)}; {hint}")
    definition = kinds[kind]
    schema = definition.schema
    what = f"check {kind!r}"
    reader.keys(item, what, ("kind",), [*schema, "name"])
    params: dict[str, Any] = {}
    for key, param in schema.items():
        if key not in item or item[key] is None:
            params[key] = param.default
        elif param.kind in (int, float):
            params[key] = _number(reader, item, key, param, what)
        elif param.kind is str:
            params[key] = reader.text(item, key, what)
        else:
            params[key] = reader.words(item, key, what)
    name = reader.text(item, "name", what) if "name" in item else kind
    key_lines = {str(k): v for k, v in getattr(item, "key_lines", {}).items()}
    return CheckSpec(kind=kind, name=name, params=params, line=line or 0, key_lines=key_lines,
                     definition=definition)


def load_suite(path: Path, kinds: Iterable[CheckKind] | None = None) -> Suite:
    """Read and validate a suite file against the check *kinds* (default: the shipped
    ones; under pytest, every kind the ``pytest_scenelora_check_kinds`` hook returns);
    raises :class:`SuiteError` with ``path:line``."""
    from .checks.registry import by_name, shipped_kinds

    path = Path(path)
    known = by_name(shipped_kinds() if kinds is None else kinds)
    try:
        root = load_yaml(path)
    except SceneFileError as exc:
        raise SuiteError(exc.path, exc.line, exc.message) from None
    reader = _SuiteReader(path)
    if not isinstance(root, dict):
        raise reader.fail(1, "a suite must be a mapping with a 'checks' list; write `checks:` "
                          "followed by `  - kind: scene_holds`")
    reader.keys(root, "the suite", ("checks",),
                ("suite", "scenes", "topics", "registers", "adapters", "adapter_dir", "scorer",
                 "embedder", "generation", "prompt_format"))

    def relative(key: str, must_exist: bool = True) -> Path | None:
        if key not in root:
            return None
        target = (path.parent / reader.text(root, key, "the suite")).resolve()
        if must_exist and not target.exists():
            raise reader.fail(reader.line_of(root, key),
                              f"{key} {excerpt(str(target), 200)} does not exist; give a path relative "
                              "to this file")
        return target

    generation = GenerationSpec()
    if "generation" in root:
        block = reader.mapping(root["generation"], "'generation'", reader.line_of(root, "generation"),
                               "`max_new_tokens: 40`, `temperature: 0.8`, `top_p: 0.95`")
        reader.keys(block, "'generation'", (), ("max_new_tokens", "temperature", "top_p"))
        limits = {"max_new_tokens": Param(int, 40, 1, 1024), "temperature": Param(float, 0.8, 0.01, 5.0),
                  "top_p": Param(float, 0.95, 0.01, 1.0)}
        generation = GenerationSpec(**{k: _number(reader, block, k, limits[k], "'generation'")
                                       for k in block})
    checks = [_check(reader, item, line, known)
              for line, item in reader.items(root, "checks", "kind: scene_holds")]
    seen: dict[str, int | None] = {}
    for spec in checks:
        reader.unique(seen, spec.name, "check name", spec.line)
    scorer = reader.choice(root, "scorer", "the suite", Scorer, Scorer.EMBEDDING)
    prompt_format = reader.choice(root, "prompt_format", "the suite", PromptFormat, None)
    return Suite(
        path=path,
        title=reader.text(root, "suite", "the suite") if "suite" in root else path.stem,
        scenes=relative("scenes"),
        topics=relative("topics"),
        registers=relative("registers"),
        adapters=reader.text(root, "adapters", "the suite") if "adapters" in root else "*",
        adapter_dir=relative("adapter_dir", must_exist=False),
        scorer=scorer,
        embedder=reader.text(root, "embedder", "the suite") if "embedder" in root else None,
        generation=generation,
        checks=tuple(checks),
        adapters_line=reader.line_of(root, "adapters") or 0,
        prompt_format=prompt_format.value if prompt_format is not None else None,
        prompt_format_line=reader.line_of(root, "prompt_format") or 0,
    )


def check_references(suite: Suite, scene_ids: set[str], topic_ids: set[str], registers: set[str]) -> None:
    """Every scene, topic and register a check names exists; else ``path:line: ...``."""

    def known(value: str | None, pool: set[str], what: str, spec: CheckSpec, key: str) -> None:
        if value is None or value in pool:
            return
        close = close_match(value, sorted(pool))
        hint = f"did you mean {close!r}?" if close else f"the {what}s are {listing(sorted(pool))}"
        raise SuiteError(suite.path, spec.line_of(key), f"check {excerpt(spec.name)}: unknown {what} "
                         f"{excerpt(value)} in {key!r}; {hint}")

    for spec in suite.checks:
        known(spec.params.get("scene"), scene_ids, "scene", spec, "scene")
        known(spec.params.get("register"), registers, "register", spec, "register")
        for topic in spec.params.get("topics") or ():
            known(topic, topic_ids, "topic", spec, "topics")
