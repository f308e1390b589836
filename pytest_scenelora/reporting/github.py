"""GitHub Actions output: error annotations at the suite YAML line, and a step summary.

Under ``GITHUB_ACTIONS=true`` a failed or regressed check prints a workflow command,
``::error file=suites/registers.yaml,line=7,title=…::…``, which GitHub shows on that
line of the pull request's diff, and the session appends a Markdown report to the file
named by ``$GITHUB_STEP_SUMMARY``. Pure functions of the records (see :mod:`.results`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..scoring.verdict import fmt_number
from .terminal import STATUS_STYLE, record_matrix, record_summary, worst_label

__all__ = ["annotations", "escape_data", "escape_log", "escape_markdown", "escape_property",
           "in_github_actions", "step_summary"]

#: What a log viewer or terminal acts on instead of showing: C0/C1 controls (a newline
#: starts a fresh line, where GitHub reads ``::error::`` as a workflow command; ESC starts
#: colour and hyperlink sequences), line and paragraph separators, the invisible format
#: characters (bidirectional overrides, zero-width marks) and lone surrogates (a file name
#: that is not UTF-8; printing one raises ``UnicodeEncodeError``).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                     r"\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")

#: Workflow commands: ``::name ...::`` and the older ``##[name]`` form, which the runner
#: reads at the start of a line (after spaces).
_COMMAND = re.compile(r"(?<=:):|(?<=#)#(?=\[)")

#: The Markdown characters that could make a name render as something else: a table
#: column (``|``), HTML (``<``), a link or an image (``[``, ``]``), code, emphasis,
#: strikethrough, a mention, an entity; ``_`` only at a word's edge (inside a word it is
#: never emphasis, and ``Δ42_poetic`` stays readable in the Markdown source).
_MARKDOWN = re.compile(r"[\\`*\[\]<>|&~@]|(?<!\w)_|_(?!\w)")


def in_github_actions(environ: Mapping[str, str] | None = None) -> bool:
    return (environ if environ is not None else os.environ).get("GITHUB_ACTIONS") == "true"


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_log(text: object) -> str:
    """Untrusted text (a file or adapter name, metadata) made safe for one line of a log.

    Anyone can propose a file name in a pull request, and a name is printed in the pytest
    header, in node ids and in the gate's lines: one holding a newline and ``::error::``
    would otherwise start a line that GitHub runs as a workflow command. Every character in
    :data:`_UNSAFE` is written as its escape (``\\n``, ``\\x1b``, ``\\u202e``) and the
    second colon of ``::`` (and the second ``#`` of ``##[``) as ``\\x3a`` (``\\x23``), so
    the text stays on its line and cannot form a command anywhere in it. Letters of any
    script (``Δ42_poetic``, Cyrillic) are kept as they are.
    """
    escaped = _UNSAFE.sub(_escape_char, str(text))
    return _COMMAND.sub(lambda m: "\\x3a" if m.group() == ":" else "\\x23", escaped)


def escape_markdown(text: object) -> str:
    """Untrusted text for the step summary's Markdown: the characters of :data:`_UNSAFE`
    written as escapes (as in :func:`escape_log`; a summary is rendered, never read for
    workflow commands, so ``::`` stays), then each character of :data:`_MARKDOWN`
    backslash-escaped (CommonMark allows it for every ASCII punctuation character), so
    ``|`` cannot split a table cell, ``<img>`` cannot open HTML and ``![](url)`` stays text."""
    return _MARKDOWN.sub(lambda m: "\\" + m.group(), _UNSAFE.sub(_escape_char, str(text)))


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF escaped (GitHub's own rules)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: as :func:`escape_data`, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation_path(suite: str, root: Path | None, workspace: str | None) -> str:
    """The suite's path relative to the checked-out repository, as GitHub wants it."""
    path = Path(suite)
    if root is not None and not path.is_absolute():
        path = root / path
    if workspace and path.resolve().is_relative_to(Path(workspace).resolve()):
        return path.resolve().relative_to(Path(workspace).resolve()).as_posix()
    return Path(suite).as_posix()


def _verdict_message(verdict: Mapping[str, Any]) -> str:
    from ..scoring.verdict import Verdict

    return Verdict.from_dict(verdict).explain()


def annotations(records: Sequence[Mapping[str, Any]], *, root: Path | None = None,
                workspace: str | None = None) -> list[str]:
    """One ``::error`` line per failed or regressed check item, at its suite line."""
    lines = []
    for record in records:
        verdict = record["verdict"]
        comparison = record.get("baseline") or {}
        failed = verdict.get("status") != "pass"
        regressed = comparison.get("change") == "regressed"
        if not (failed or regressed):
            continue
        parts = []
        if failed:
            parts.append(_verdict_message(verdict))
        if regressed:
            parts.append(f"regressed: {comparison['line']}" if failed else comparison["line"])
        what = "regressed" if regressed and not failed else verdict.get("status", "failed")
        title = f"scenelora {record.get('name')}[{record.get('adapter')}] {what}"
        where = annotation_path(str(record.get("suite", "")), root, workspace)
        lines.append(f"::error file={escape_property(where)},line={int(record.get('line') or 1)},"
                     f"title={escape_property(title)}::{escape_data(chr(10).join(parts))}")
    return lines


_md = escape_markdown


def step_summary(records: Sequence[Mapping[str, Any]], *, baseline: Mapping[str, Any] | None = None,
                 environment: Mapping[str, Any] | None = None) -> str:
    """The Markdown report for ``$GITHUB_STEP_SUMMARY``: summary, matrix, regressions."""
    icons = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️"}
    out = ["## scenelora coherence", "", record_summary(records, baseline=baseline), ""]
    if records:
        adapters, columns, cells = record_matrix(records)
        out.append("| adapter | " + " | ".join(_md(c) for c in columns) + " |")
        out.append("|---|" + "---|" * len(columns))
        for adapter in adapters:
            row = [f"**{_md(adapter)}**"]
            for column in columns:
                record = cells.get((adapter, column))
                if record is None:
                    row.append("–")
                    continue
                v = record["verdict"]
                status = v.get("status", "")
                cell = f"{icons.get(status, '?')} {fmt_number(v.get('score'))}"
                if v.get("ci_low") is not None and v.get("ci_high") is not None and \
                        (v.get("detail") or {}).get("statistic") != "max":
                    cell += f" [{fmt_number(v['ci_low'])}, {fmt_number(v['ci_high'])}]"
                op = "≥" if v.get("higher_is_better", True) else "≤"
                cell += f" (needs {op} {fmt_number(v.get('threshold'))})"
                change = (record.get("baseline") or {})
                if change.get("change") == "regressed":
                    cell += " 🔻 regressed"
                elif change.get("change") == "improved":
                    cell += " 🔺 improved"
                if status != "pass" and worst_label(record):
                    cell += f"<br>worst: {_md(worst_label(record))}"
                row.append(cell)
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    regressions = [r["baseline"]["line"] for r in records
                   if (r.get("baseline") or {}).get("change") == "regressed"]
    if regressions:
        out += ["### Regressions", "", *(f"- {_md(line)}" for line in regressions), ""]
    failures = [r for r in records if r["verdict"].get("status") != "pass"]
    if failures:
        out += ["### Failed checks", ""]
        for r in failures:
            word = STATUS_STYLE.get(r["verdict"].get("status", ""), ("?",))[0]
            where = f"{_md(r.get('suite'))}:{_md(r.get('line'))}"
            out.append(f"- <code>{_md(r['id'])}</code> ({where}): {word} — "
                       f"{_md(_verdict_message(r['verdict']).splitlines()[0])}")
        out.append("")
    if environment:
        shown = ("python", "torch", "transformers", "peft", "device", "dtype", "seed")
        facts = ", ".join(f"{k} {v}" for k, v in environment.items() if k in shown and v is not None)
        out += [f"<sub>{_md(facts)}</sub>", ""]
    return "\n".join(out) + "\n"
