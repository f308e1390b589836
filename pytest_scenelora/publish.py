"""What a finished session leaves behind: the JSON results, the HTML report, the updated
baseline and, under GitHub Actions, the step summary.

Called once, by the process that saw every report (the pytest-xdist controller, or the
only process), so nothing a worker produced is lost and no two processes write one file.
Every file is written atomically (:mod:`.fsutil`); a file that cannot be written is
reported in one line, and the run's own outcome stands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .settings import Settings

__all__ = ["publish", "session_document"]


def session_document(records: Sequence[Mapping[str, Any]], settings: Settings,
                     baseline: Mapping[str, Any] | None = None,
                     prompt_format: str | None = None) -> dict[str, Any]:
    from .reporting.baseline import baseline_date
    from .reporting.results import build_document

    stored = None
    if baseline is not None:
        stored = {"path": settings.baseline_path, "created": baseline.get("created"),
                  "date": baseline_date(baseline)}
    document = build_document(records, settings={"base_model": settings.base_model, "seed": settings.seed,
                                                 "embedder": settings.embedder}, baseline=stored)
    _add_base_source(document["base"])
    document["base"]["prompt_format"] = prompt_format or settings.prompt_format.value
    return document


def _add_base_source(base: dict[str, Any]) -> None:
    """A base converted from a GGUF file says which one (name, sha256, preset) in the JSON;
    its weights' content hash is already there and in every cache key."""
    from .engine.gguf import read_source

    folder = base.get("name")
    source = read_source(Path(folder)) if isinstance(folder, str) and folder else None
    if source is not None:
        base["source"] = {k: source.get(k) for k in ("preset", "gguf_file", "gguf_sha256",
                                                     "architecture", "quant_types")}


def publish(document: Mapping[str, Any], settings: Settings,
            environ: Mapping[str, str] | None = None) -> list[str]:
    """Write every output the settings ask for; returns one line per file written (or not)."""
    environ = os.environ if environ is None else environ
    lines: list[str] = []
    records = document["results"]

    def attempt(what: str, path: str, write) -> None:
        try:
            write(Path(path))
        except OSError as exc:
            lines.append(f"scenelora: could not write the {what} {path} ({exc.strerror or exc}); "
                         "check that its folder is writable")
        else:
            lines.append(f"scenelora: {what} written to {path}")

    if settings.json_path:
        from .reporting.results import write_document

        attempt("results", settings.json_path, lambda p: write_document(p, document))
    if settings.html_path:
        from .fsutil import atomic_write_text
        from .reporting.html import render_html

        attempt("HTML report", settings.html_path, lambda p: atomic_write_text(p, render_html(document)))
    if settings.update_baseline and settings.baseline_path:
        from .errors import SceneloraError
        from .reporting.baseline import update_baseline

        if not records:
            lines.append(f"scenelora: baseline {settings.baseline_path} left as it was: no check ran")
        else:
            try:
                merged = update_baseline(Path(settings.baseline_path), document)
            except OSError as exc:
                lines.append(f"scenelora: could not write the baseline {settings.baseline_path} "
                             f"({exc.strerror or exc}); check that its folder is writable")
            except SceneloraError as exc:
                lines.append(f"scenelora: baseline not updated: {exc}")
            else:
                lines.append(f"scenelora: baseline {settings.baseline_path} updated: {len(records)} checks "
                             f"from this run, {len(merged['results'])} in all")
    summary_path = environ.get("GITHUB_STEP_SUMMARY")
    if summary_path and environ.get("GITHUB_ACTIONS") == "true" and records:
        from .reporting.github import step_summary

        text = step_summary(records, baseline=document.get("baseline"),
                            environment=document.get("environment"))
        try:
            # appended, as GitHub asks: other steps and tools write to the same file
            with open(summary_path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            lines.append(f"scenelora: could not append to $GITHUB_STEP_SUMMARY {summary_path} ({exc})")
    return lines
