"""``scenelora report`` and ``scenelora compare``: results files read back, offline.

``scenelora report results.json --html out.html`` renders the same report a session
writes with ``--scenelora-html``; ``scenelora compare BASELINE.json CANDIDATE.json``
prints the side-by-side table and exits 1 when any check regressed (0 otherwise), so a
CI step can gate on it without running a model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..settings import parse_regression, parse_seed


def _color(choice: str) -> bool:
    if choice != "auto":
        return choice == "yes"
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stdout.isatty()


def _width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


def cmd_report(args: argparse.Namespace) -> int:
    from ..reporting.results import load_document
    from ..reporting.terminal import render_coherence
    from ..text import printable

    document = load_document(args.results)
    if args.html:
        from ..fsutil import atomic_write_text
        from ..reporting.html import render_html

        atomic_write_text(args.html, render_html(document))
    text = render_coherence(document["results"], color=_color(args.color), width=_width(),
                            baseline=document.get("baseline"))
    sys.stdout.write(text or "no checks in this results file\n")
    if args.html:
        print(f"wrote {printable(args.html)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..reporting.baseline import Change, compare_documents
    from ..reporting.results import load_document
    from ..reporting.terminal import render_comparison
    from ..text import printable

    baseline = load_document(args.baseline, what="baseline")
    candidate = load_document(args.candidate)
    comparisons = compare_documents(baseline, candidate, seed=args.seed, framing=args.regression)
    sys.stdout.write(render_comparison(comparisons, color=_color(args.color), width=_width()))
    regressed = [c for c in comparisons if c.change is Change.REGRESSED]
    for c in regressed:
        print(f"regressed: {printable(c.line())}")
    return 1 if regressed else 0


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="render a results file (--scenelora-json) as a report",
                            description="Print the coherence report of a results file written by "
                                        "`pytest --scenelora-json`; --html writes the HTML report too.")
    report.add_argument("results", type=Path, metavar="RESULTS.json")
    report.add_argument("--html", type=Path, metavar="OUT.html", help="write the self-contained HTML report")
    report.add_argument("--color", choices=("auto", "yes", "no"), default="auto")
    report.set_defaults(handler=cmd_report)

    compare = sub.add_parser("compare", help="compare two results files; exit 1 on any regression",
                             description="Compare a candidate results file with a baseline, check by "
                                         "check (paired over per-sample scores: McNemar's exact test for "
                                         "success rates, a bootstrap for scores; each check's "
                                         "tolerance); exit 1 when any check regressed, else 0.")
    compare.add_argument("baseline", type=Path, metavar="BASELINE.json")
    compare.add_argument("candidate", type=Path, metavar="CANDIDATE.json")
    compare.add_argument("--seed", type=parse_seed, default=None, metavar="N",
                         help="bootstrap seed (default: the candidate run's seed)")
    compare.add_argument("--regression", type=parse_regression, default="drop",
                         metavar="drop|non-inferiority",
                         help="drop: a significant drop beyond the tolerance regresses (default); "
                              "non-inferiority: regressed unless shown no worse than the tolerance")
    compare.add_argument("--color", choices=("auto", "yes", "no"), default="auto")
    compare.set_defaults(handler=cmd_compare)
