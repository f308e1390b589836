"""The coherence report, built as data (no I/O): a matrix of adapters × checks.

``plugin.py`` collects each check item's verdict from its test report (``user_properties``
travel from pytest-xdist workers to the controller, so this works under ``-n``) and writes
these lines through pytest's terminal reporter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..scoring.verdict import fmt_number
from ..text import printable
from .results import record_order


def plain(text: object, style: str = "") -> Any:
    """*text* as a rich ``Text``: shown literally, never parsed as rich markup (so
    ``act[/y]ive`` is not a closing tag and ``[link=...]`` is not a hyperlink), and
    :func:`printable`. Every untrusted string given to rich goes through this."""
    from rich.text import Text

    return Text(printable(text), style=style)


# ------------------------------------------------------------------ records (the rich report)
#
# The functions below work on *records*: one per check item, as the results document
# keeps them (``{"id", "suite", "line", "name", "adapter", "verdict": {...}, "baseline": ...}``,
# see :mod:`.results`). They build cells as data; :func:`render_coherence` lays them out
# with rich into a string, coloured or plain as the caller (pytest's terminal writer) says.

#: How each verdict status is shown, and in which colour.
STATUS_STYLE = {"pass": ("PASS", "green"), "fail": ("FAIL", "bold red"),
                "inconclusive": ("INCONCL", "yellow")}
CHANGE_STYLE = {"regressed": ("▼", "bold red"), "improved": ("▲", "green")}
BAR_WIDTH = 11


def column_name(record: Mapping[str, Any]) -> str:
    return str(record.get("name") or record["verdict"]["check"])


def column_of(record: Mapping[str, Any], suites_of: Mapping[str, set[str]] | None = None) -> str:
    name = column_name(record)
    if suites_of is not None and len(suites_of.get(name, ())) > 1:
        stem = str(record.get("suite", "")).rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return f"{stem}/{name}"
    return name


def record_matrix(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], dict]:
    """(adapters, check columns, {(adapter, column): record}), checks in suite order."""
    records = sorted(records, key=record_order)
    suites_of: dict[str, set[str]] = {}
    for r in records:
        suites_of.setdefault(column_name(r), set()).add(r.get("suite", ""))
    adapters = list(dict.fromkeys(str(r.get("adapter") or r["verdict"]["subject"]) for r in records))
    columns = list(dict.fromkeys(column_of(r, suites_of) for r in records))
    cells = {(str(r.get("adapter") or r["verdict"]["subject"]), column_of(r, suites_of)): r for r in records}
    return adapters, columns, cells


def bar_domain(verdict: Mapping[str, Any]) -> tuple[float, float]:
    """The scale a cell's interval bar is drawn on: 0..1 for rates, else a span around
    the interval, the score and the threshold."""
    detail = verdict.get("detail") or {}
    values = [v for v in (verdict.get("ci_low"), verdict.get("ci_high"), verdict.get("score"),
                          verdict.get("threshold")) if isinstance(v, int | float)]
    if detail.get("interval") == "wilson":
        return 0.0, 1.0
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if detail.get("statistic") == "max" or lo >= 0:
        lo = 0.0
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    return lo - (pad if lo < 0 else 0.0), hi + pad


def ci_bar(verdict: Mapping[str, Any], width: int = BAR_WIDTH) -> list[tuple[str, str]]:
    """The interval as a small bar against the threshold, as (character, role) pairs:
    role ``track`` (outside the interval), ``ci`` (inside it), ``score`` (the point
    estimate) and ``threshold`` (the bar to clear)."""
    lo, hi = bar_domain(verdict)

    def at(x: Any) -> int | None:
        if not isinstance(x, int | float) or x != x:
            return None
        return max(0, min(width - 1, round((x - lo) / (hi - lo) * (width - 1)))) if hi > lo else 0

    cells = [("─", "track") for _ in range(width)]
    low, high = at(verdict.get("ci_low")), at(verdict.get("ci_high"))
    if low is not None and high is not None:
        for i in range(min(low, high), max(low, high) + 1):
            cells[i] = ("━", "ci")
    score = at(verdict.get("score"))
    if score is not None:
        cells[score] = ("●", "score")
    threshold = at(verdict.get("threshold"))
    if threshold is not None:
        cells[threshold] = ("┃", "threshold")
    return cells


def worst_label(record: Mapping[str, Any], limit: int = 24) -> str:
    """The worst scene, topic or probe of a record, short: what a cell names as its weak spot."""
    verdict = record["verdict"]
    detail = verdict.get("detail") or {}
    context = (verdict.get("worst") or {}).get("context") or {}
    label = ""
    if detail.get("minimal_failing_scene"):
        label = f"scene {detail['minimal_failing_scene'].get('core', '')}"
    elif detail.get("worst_topic"):
        label = f"topic {context.get('topic') or detail['worst_topic']}"
    elif context.get("probe"):
        label = f"probe {' '.join(str(context['probe']).split())}"
    elif context.get("closest other"):
        label = f"lost to {context['closest other']}"
    elif context.get("nearest register"):
        label = f"read as {context['nearest register']}"
    elif context.get("scene"):
        label = f"scene {context['scene']}"
    label = printable(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"


def record_summary(records: Sequence[Mapping[str, Any]], *, baseline: Mapping[str, Any] | None = None) -> str:
    """One line: how many checks, on how many adapters, passed/failed/inconclusive, and
    against a baseline how many regressed or improved."""
    statuses = [r["verdict"].get("status") for r in records]
    adapters = {r.get("adapter") or r["verdict"]["subject"] for r in records}
    line = (f"scenelora: {len(records)} checks on {len(adapters)} adapter{'s' * (len(adapters) != 1)}: "
            f"{statuses.count('pass')} passed, {statuses.count('fail')} failed, "
            f"{statuses.count('inconclusive')} inconclusive")
    changes = [(r.get("baseline") or {}).get("change") for r in records]
    if baseline is not None or any(changes):
        date = (baseline or {}).get("created", "")[:10] or next(
            (r["baseline"].get("baseline_date") for r in records if r.get("baseline")), "")
        line += (f"; against the baseline of {printable(date) if date else 'unknown date'}: "
                 f"{changes.count('regressed')} regressed, {changes.count('improved')} improved")
    return line


def render_coherence(records: Sequence[Mapping[str, Any]], *, color: bool, width: int = 100,
                     baseline: Mapping[str, Any] | None = None, fit: bool = False) -> str:
    """The adapters × checks matrix and its summary line, laid out by rich.

    ``color=False`` gives plain text with no escape codes at all (pipes, CI logs,
    ``NO_COLOR``); the characters are the same either way. ``fit=True`` (output that is not
    a terminal: a pipe, a CI log) widens the table to its natural width instead of cutting
    columns to *width*, since nothing there wraps or truncates long lines.
    """
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not records:
        return ""
    adapters, columns, cells = record_matrix(records)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    # names come from suites and adapter files: each goes to rich as a Text, never as markup
    table.add_column("adapter", no_wrap=True, min_width=max(len(printable(a)) for a in adapters))
    for column in columns:
        table.add_column(plain(column), no_wrap=True, min_width=BAR_WIDTH)
    bar_style = {"track": "dim", "score": "bold", "threshold": "bold blue"}
    for adapter in adapters:
        row: list[Any] = [plain(adapter, style="bold")]
        for column in columns:
            record = cells.get((adapter, column))
            if record is None:
                row.append(Text("-", style="dim"))
                continue
            verdict = record["verdict"]
            word, style = STATUS_STYLE.get(verdict.get("status", ""), ("?", ""))
            # score and verdict; the interval bar against the threshold; the weak spot;
            # the change against the baseline: one short line each, so cells stay narrow
            cell = Text()
            cell.append(f"{fmt_number(verdict.get('score'))} {word}", style=style)
            cell.append("\n")
            for char, role in ci_bar(verdict):
                cell.append(char, style=style if role == "ci" else bar_style[role])
            worst = worst_label(record)
            if worst and verdict.get("status") != "pass":
                cell.append(f"\n{worst}", style="dim")
            change = (record.get("baseline") or {}).get("change")
            if change in CHANGE_STYLE:
                from .baseline import signed

                mark, change_style = CHANGE_STYLE[change]
                delta = signed(record["baseline"].get("delta"))
                cell.append(f"\n{mark} {printable(delta)} {change}", style=change_style)
            row.append(cell)
        table.add_row(*row, end_section=True)
    out = io.StringIO()
    console = Console(file=out, width=max(width, 40), force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False, emoji=False,
                      legacy_windows=False, soft_wrap=False)
    if fit:
        from rich.measure import Measurement

        natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
        console.width = max(console.width, natural)
    console.print(table)
    console.print(Text("━ 95% interval  ● score  ┃ threshold", style="dim"))
    console.print(Text(record_summary(records, baseline=baseline), style="bold"), soft_wrap=True)
    text = out.getvalue()
    return text if color else "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def render_comparison(comparisons: Sequence[Any], *, color: bool, width: int = 100) -> str:
    """``scenelora compare``'s side-by-side table: baseline, candidate, change, verdict."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .baseline import Change, signed

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in ("adapter", "check", "baseline", "candidate", "change", "95% CI", "result"):
        table.add_column(name, no_wrap=name in ("baseline", "candidate", "change", "95% CI"))
    styles = {Change.REGRESSED: "bold red", Change.IMPROVED: "green", Change.UNCHANGED: "",
              Change.NEW: "cyan", Change.MISSING: "yellow"}
    for c in comparisons:
        interval = "" if c.ci_low is None or c.ci_high is None else (
            "exact" if c.exact else f"{signed(c.ci_low)}..{signed(c.ci_high)}")
        table.add_row(plain(c.adapter), plain(c.name),
                      "" if c.baseline_score is None else fmt_number(c.baseline_score),
                      "" if c.score is None else fmt_number(c.score),
                      "" if c.delta is None else signed(c.delta), interval,
                      Text(c.change.value, style=styles[c.change]))
    out = io.StringIO()
    console = Console(file=out, width=max(width, 40), force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False, emoji=False,
                      legacy_windows=False)
    console.print(table)
    counts = {ch: sum(c.change is ch for c in comparisons) for ch in Change}
    console.print(Text(f"{len(comparisons)} checks: {counts[Change.REGRESSED]} regressed, "
                       f"{counts[Change.IMPROVED]} improved, {counts[Change.UNCHANGED]} unchanged, "
                       f"{counts[Change.NEW]} new, {counts[Change.MISSING]} missing"))
    text = out.getvalue()
    return text if color else "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
