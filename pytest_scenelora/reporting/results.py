"""The results document: every verdict of a session, with what produced it, as JSON.

``--scenelora-json`` writes it, ``--scenelora-update-baseline`` stores it as a baseline,
``scenelora report`` and ``scenelora compare`` read it back. One record per check item
(a check of a suite, on one adapter), keyed by the item's pytest node id, which is stable
between runs of the same suites and pairs a candidate with its baseline. Per-sample
scores are kept in sample-index order (samples are seeded), so two runs pair up sample
by sample.

Pure data: building and validating documents here, writing through :mod:`..fsutil`.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SceneloraError
from ..fsutil import atomic_write_text

FORMAT = "scenelora-results"
VERSION = 1

#: The packages whose versions the environment block records.
PACKAGES = ("pytest-scenelora", "torch", "transformers", "peft", "sentence-transformers", "pytest")

#: Keys every stored verdict must have (see :meth:`~.verdict.Verdict.to_dict`).
VERDICT_KEYS = ("check", "subject", "status", "score", "threshold", "higher_is_better", "samples", "n")


class ResultsFileError(SceneloraError, ValueError):
    """A results or baseline file is missing, not JSON, or not a scenelora results document."""


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def environment_block(*, base: Mapping[str, Any] | None, seed: int, embedder: str | None) -> dict[str, Any]:
    """What a reader needs to reproduce a run: versions, device, dtype, seed, embedder."""
    base = base or {}
    return {
        **package_versions(),
        "platform": f"{platform.system()} {platform.machine()}",
        "executable": sys.executable,
        "device": base.get("device"),
        "dtype": base.get("dtype"),
        "quantization": base.get("quantization"),
        "seed": seed,
        "embedder": embedder or "all-MiniLM-L6-v2 (packaged)",
    }


def summary_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    statuses = [r["verdict"].get("status") for r in records]
    changes = [(r.get("baseline") or {}).get("change") for r in records]
    return {
        "checks": len(records),
        "passed": statuses.count("pass"),
        "failed": statuses.count("fail"),
        "inconclusive": statuses.count("inconclusive"),
        "regressed": changes.count("regressed"),
        "improved": changes.count("improved"),
    }


def record_order(record: Mapping[str, Any]) -> tuple[str, int, str, str]:
    """Suite file, then the check's line in it, then the adapter: the order a reader expects."""
    return (str(record.get("suite", "")), int(record.get("line") or 0),
            str(record.get("adapter") or record["verdict"]["subject"]), str(record.get("id", "")))


def build_document(
    records: Iterable[Mapping[str, Any]],
    *,
    settings: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """The document for a session's *records* (as :mod:`..items` makes them).

    The adapters and base blocks are gathered from the records: under pytest-xdist only
    the workers load models, and each record carries what its worker saw.
    """
    ordered = sorted(records, key=record_order)
    adapters: dict[str, Any] = {}
    base: dict[str, Any] | None = None
    results = []
    for record in ordered:
        record = dict(record)
        info = record.pop("adapter_info", None)
        seen_base = record.pop("base", None)
        if info:
            adapters.setdefault(record["adapter"], info)
        if seen_base and base is None:
            base = dict(seen_base)
        results.append(record)
    base = base or {"model": settings.get("base_model")}
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": created or now_utc(),
        "base": base,
        "environment": environment_block(base=base, seed=int(settings.get("seed", 0)),
                                         embedder=settings.get("embedder")),
        "adapters": dict(sorted(adapters.items())),
        "baseline": dict(baseline) if baseline else None,
        "summary": summary_counts(results),
        "results": results,
    }


def dumps(document: Mapping[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=1, allow_nan=False) + "\n"


def write_document(path: Path, document: Mapping[str, Any]) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    atomic_write_text(Path(path), dumps(document))


def check_document(document: Any, path: Path | str, *, what: str = "results file") -> dict[str, Any]:
    """*document* if it is a results document; else :class:`ResultsFileError`, one line."""
    fix = f"regenerate it with `pytest --scenelora-json {path}`"
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ResultsFileError(f"{path}: not a scenelora {what} (no \"format\": \"{FORMAT}\"); {fix}")
    if document.get("version") != VERSION:
        raise ResultsFileError(f"{path}: {what} version {document.get('version')!r} is not {VERSION}, "
                               f"the one this pytest-scenelora reads; {fix}")
    results = document.get("results")
    if not isinstance(results, list):
        raise ResultsFileError(f"{path}: {what} has no \"results\" list; {fix}")
    for i, record in enumerate(results):
        verdict = record.get("verdict") if isinstance(record, dict) else None
        if not isinstance(verdict, dict) or not isinstance(record.get("id"), str):
            raise ResultsFileError(f"{path}: result #{i} has no \"id\" or \"verdict\"; {fix}")
        missing = [k for k in VERDICT_KEYS if k not in verdict]
        if missing:
            raise ResultsFileError(f"{path}: result {record['id']!r} lacks {', '.join(missing)} in its "
                                   f"verdict; {fix}")
    return document


def load_document(path: Path | str, *, what: str = "results file") -> dict[str, Any]:
    """Read and validate a results (or baseline) document; one-line errors, no traceback."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such {what}; write one with `pytest --scenelora-json {path}`"
                               + (" or --scenelora-update-baseline" if what == "baseline" else "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"{path}: cannot read the {what} ({exc.__class__.__name__}: {exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{path}: the {what} is not valid JSON (line {exc.lineno}, column "
                               f"{exc.colno}: {exc.msg}); regenerate it, or restore it from version "
                               "control") from None
    return check_document(document, path, what=what)


def merge_documents(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """*new*, plus every record of *old* that *new* did not run (a ``-k`` run, or a
    suite left out, updates its part of a baseline and keeps the rest)."""
    if old is None:
        return dict(new)
    ran = {r["id"] for r in new["results"]}
    kept = [r for r in old["results"] if r["id"] not in ran]
    merged = dict(new)
    merged["results"] = sorted([*new["results"], *kept], key=record_order)
    merged["adapters"] = dict(sorted({**old.get("adapters", {}), **new.get("adapters", {})}.items()))
    merged["summary"] = summary_counts(merged["results"])
    return merged
