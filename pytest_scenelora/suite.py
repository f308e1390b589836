"""Suite files: declarative YAML that says which checks to run on which adapters.

A suite is recognised by a top-level ``checks:`` line (so a CI workflow or any other YAML
is never collected), read with the line-recording loader of :mod:`.scenes`, and
validated against the schema below. Every error is one line, ``path:line: what is wrong,
and what to write instead``. Nothing from YAML is ever evaluated.
"""

from __future__ import annotations

import enum
import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scenes import SceneFileError, _Map, _Reader, close_match, excerpt, listing, load_yaml

SUITE_MARKER = re.compile(r"^checks\s*:", re.MULTILINE)


class SuiteError(SceneFileError):
    """A suite file is malformed; the message is ``path:line: ...``."""


class Scorer(str, enum.Enum):
    EMBEDDING = "embedding"
    CHAR_NGRAM = "char-ngram"


@dataclass(frozen=True)
class Param:
    """One parameter of a check kind: its type, default and allowed range."""

    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""


_SAMPLES = Param(int, 12, 2, 512, "samples per prompt")
#: The schema: for each check kind, its parameters. ``threshold`` is in the check's own unit.
KINDS: dict[str, dict[str, Param]] = {
    "adapter_active": {
        "threshold": Param(float, 0.02, 0.0, 100.0, "KL floor (nats) the mean must clear"),
        "probes": Param(int, 12, 2, 256, "probe prompts"),
    },
    "scene_holds": {
        "threshold": Param(float, 0.03, -1.0, 1.0, "contrastive margin the mean must clear"),
        "samples": _SAMPLES,
        "scene": Param(str, None, help="scene id (default: the adapter's scene)"),
    },
    "registers_unpack": {
        "threshold": Param(float, 0.6, 0.0, 1.0, "share of samples on the scene AND in the register"),
        "samples": _SAMPLES,
        "scene": Param(str, None, help="scene id (default: the adapter's scene)"),
        "register": Param(str, None, help="register (default: the adapter's role)"),
    },
    "style_survives_topic_shift": {
        "threshold": Param(float, 0.6, 0.0, 1.0, "share of samples on the topic AND in the register"),
        "samples": Param(int, 4, 1, 256, "samples per topic"),
        "topics": Param(list, None, help="topic ids (default: every topic)"),
        "register": Param(str, None, help="register (default: the adapter's role)"),
    },
    "unseen_scenes": {
        "threshold": Param(float, 0.5, 0.0, 1.0, "share of samples on the scene AND in the register"),
        "samples": Param(int, 6, 2, 256, "samples per drawn scene"),
        "examples": Param(int, 5, 1, 200, "Hypothesis examples (scenes drawn)"),
        "register": Param(str, None, help="register (default: the adapter's role)"),
    },
    "merge_equivalence": {
        "threshold": Param(float, 1e-3, 0.0, 10.0, "largest allowed logit difference"),
        "probes": Param(int, 8, 1, 256, "probe prompts"),
        "weight": Param(float, 1.0, -10.0, 10.0, "weight of the adapter in the merge"),
        "merged_model": Param(str, None, help="a merged checkpoint to verify (default: merge here)"),
    },
}
#: How far a score may drop below a stored baseline (``--scenelora-baseline``) before the
#: drop counts as a regression, in each check's own unit; a suite sets it per check with
#: ``tolerance:``. A drop must also be significant (a paired bootstrap) to regress.
TOLERANCES = {
    "adapter_active": 0.02,  # nats of KL
    "scene_holds": 0.02,  # contrastive margin
    "registers_unpack": 0.05,  # success rate
    "style_survives_topic_shift": 0.05,
    "unseen_scenes": 0.05,
    "merge_equivalence": 1e-3,  # logit units (lower is better: a rise regresses)
}
for _kind, _tolerance in TOLERANCES.items():
    KINDS[_kind]["tolerance"] = Param(float, _tolerance, 0.0, 100.0,
                                      "largest drop from the baseline that is not a regression")
COMMON = {"kind", "name"}


@dataclass(frozen=True)
class CheckSpec:
    kind: str
    name: str
    params: Mapping[str, Any]
    line: int
    key_lines: Mapping[str, int] = field(default_factory=dict)

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class GenerationSpec:
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_p: float = 0.95


@dataclass(frozen=True)
class Suite:
    path: Path
    title: str
    scenes: Path | None
    topics: Path | None
    registers: Path | None
    adapters: str
    adapter_dir: Path | None
    scorer: Scorer
    embedder: str | None
    generation: GenerationSpec
    checks: tuple[CheckSpec, ...]
    adapters_line: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def selects(self, adapter_name: str) -> bool:
        return fnmatch.fnmatchcase(adapter_name, self.adapters)


class _SuiteReader(_Reader):
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


def _number(reader: _Reader, mapping: _Map, key: str, param: Param, what: str) -> Any:
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


def _check(reader: _Reader, item: _Map, line: int | None) -> CheckSpec:
    if "kind" not in item:
        raise reader.fail(line, f"a check has no 'kind'; add `kind: ...`, one of {', '.join(KINDS)}")
    kind = item["kind"]
    if kind not in KINDS:
        close = close_match(kind, KINDS)
        hint = f"did you mean {close!r}?" if close else f"use one of {', '.join(KINDS)}"
        raise reader.fail(reader.line_of(item, "kind"), f"unknown check kind {excerpt(kind)}; {hint}")
    schema = KINDS[kind]
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
    return CheckSpec(kind=kind, name=name, params=params, line=line or 0, key_lines=key_lines)


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file; raises :class:`SuiteError` with ``path:line``."""
    path = Path(path)
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
                 "embedder", "generation"))

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
    checks = [_check(reader, item, line) for line, item in reader.items(root, "checks", "kind: scene_holds")]
    seen: dict[str, int | None] = {}
    for spec in checks:
        reader.unique(seen, spec.name, "check name", spec.line)
    scorer = reader.choice(root, "scorer", "the suite", Scorer, Scorer.EMBEDDING)
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
