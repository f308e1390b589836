"""The coherence report, built as data (no I/O): a matrix of adapters × checks.

``plugin.py`` collects each check item's verdict from its test report (``user_properties``
travel from pytest-xdist workers to the controller, so this works under ``-n``) and writes
these lines through pytest's terminal reporter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

STATUS_MARK = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCL"}


def _cell(verdict: Mapping[str, Any]) -> str:
    score = verdict.get("score")
    shown = f"{score:.3g}" if isinstance(score, int | float) else "?"
    return f"{STATUS_MARK.get(verdict.get('status', ''), '?')} {shown}"


def coherence_matrix(verdicts: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], dict]:
    """(adapters, checks, {(adapter, check): verdict}) in first-seen order."""
    adapters: dict[str, None] = {}
    checks: dict[str, None] = {}
    cells: dict[tuple[str, str], Mapping[str, Any]] = {}
    for verdict in verdicts:
        adapter, check = verdict["subject"], verdict["check"]
        adapters.setdefault(adapter)
        checks.setdefault(check)
        cells[(adapter, check)] = verdict
    return list(adapters), list(checks), cells


def summary_line(verdicts: Sequence[Mapping[str, Any]]) -> str:
    counts = {status: sum(v.get("status") == status for v in verdicts) for status in STATUS_MARK}
    return (f"{len(verdicts)} checks: {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['inconclusive']} inconclusive")


def coherence_lines(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The matrix as aligned plain-text lines, then the summary line."""
    if not verdicts:
        return []
    adapters, checks, cells = coherence_matrix(verdicts)
    header = ["adapter", *checks]
    rows = [[a, *(_cell(cells[(a, c)]) if (a, c) in cells else "-" for c in checks)] for a in adapters]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return [*lines, summary_line(verdicts)]
