"""``scenelora plan``: how many samples a check's decision needs, before running it.

``scenelora plan --threshold 0.6 --expected 0.7`` (a success rate) or
``scenelora plan --threshold 0.03 --expected 0.08 --sd 0.13`` (a score) prints the fixed
design's sample count and what sequential sampling draws on average: the number an
inconclusive verdict quotes, made a tool for choosing ``samples`` and ``max_samples``.
"""

from __future__ import annotations

import argparse

from ..settings import number_parser

_fraction = number_parser(float, lambda x: 0 < x < 1, "is not between 0 and 1")
_positive = number_parser(float, lambda x: x > 0, "is not above 0")
_count = number_parser(int, lambda n: n >= 2, "is below 2")


def add_plan_command(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="how many samples a check needs to decide an expected rate or score",
                          description=__doc__.splitlines()[2].strip() if __doc__ else None)
    plan.add_argument("--threshold", type=number_parser(float, lambda x: True, ""), required=True,
                      metavar="T", help="the check's threshold")
    plan.add_argument("--expected", type=number_parser(float, lambda x: True, ""), required=True,
                      metavar="X", help="the success rate (or mean score, with --sd) you expect")
    plan.add_argument("--sd", type=_positive, default=None, metavar="S",
                      help="the spread of one sample's score (omit for a success rate)")
    plan.add_argument("--samples", type=_count, default=24, metavar="N", help="the suite's samples (24)")
    plan.add_argument("--batch", type=_count, default=None, metavar="N",
                      help="samples per sequential batch (default: --samples)")
    plan.add_argument("--max-samples", type=_count, default=240, metavar="N", help="the budget (240)")
    plan.add_argument("--confidence", type=_fraction, default=0.95, metavar="C", help="0.95")
    plan.add_argument("--power", type=_fraction, default=0.8, metavar="P",
                      help="how often the fixed design should decide (0.8)")
    plan.set_defaults(handler=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..scoring.planning import plan

    try:
        result = plan(args.expected, args.threshold, sd=args.sd, confidence=args.confidence,
                      power=args.power, first=args.samples, batch=args.batch or args.samples,
                      budget=args.max_samples)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for line in result.lines():
        print(line)
    return 0
