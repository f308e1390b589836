"""A run's verdicts as one family of decisions: the multiplicity adjustment
(``--scenelora-multiplicity none|holm|bh``).

Each verdict is decided at its own level (95%: a verdict is wrong at most 5% of the
time). A run of 16 adapters × 6 checks makes 96 such decisions, and about five of them
are wrong by chance when nothing at all is wrong. ``holm`` keeps the chance that *any*
decision of the run is wrong within 5%; ``bh`` keeps the expected *share* of wrong ones
among the decided within 5%.

The family is every verdict that carries a p-value (``detail["p_value"]``, which
:func:`~.scoring.verdict.decide` sets; deterministic checks such as ``merge_equivalence``
have none and no error to control). A verdict that was decided at its own level but not
after the adjustment becomes inconclusive, with the reason. Pure: records in, records and
a summary out; the plugin turns a pass that did not hold into a failed session.

Regressions against a baseline are judged as each item runs, before the other items'
p-values exist, so there the adjustment is Bonferroni over the run's check items (see
:func:`~.baseline.compare_record`'s *family*): a regression counts only at
``p <= 0.05 / items``, which bounds the family-wise error and the false discovery rate
both.

Why ``none`` is the default: a check item is a pytest test, and a test's verdict should
not change because other tests ran beside it (adding an adapter to a run would turn
another adapter's pass into "inconclusive"). Choose ``holm`` when the run as a whole is
the claim (a release gate: "every check of this adapter library holds"), ``bh`` when a
run screens many adapters and a few wrong calls among many are acceptable.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..scoring.multiplicity import Multiplicity, adjust, decided_after
from ..scoring.verdict import fmt_number

__all__ = ["FamilyResult", "adjust_records"]

_NAMES = {Multiplicity.HOLM: "Holm", Multiplicity.BH: "Benjamini-Hochberg", Multiplicity.NONE: "none"}


@dataclass(frozen=True)
class FamilyResult:
    """What the adjustment did: its method, how many verdicts it covered, and which
    decisions did not hold (``(id, status before)`` pairs)."""

    method: Multiplicity
    family: int
    undecided: tuple[tuple[str, str], ...] = field(default=())

    @property
    def passes_lost(self) -> list[str]:
        return [node for node, status in self.undecided if status == "pass"]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method.value, "family": self.family,
                "undecided": [{"id": node, "was": status} for node, status in self.undecided]}

    def lines(self) -> list[str]:
        """The terminal's account of it: nothing under ``none``."""
        if self.method is Multiplicity.NONE:
            return []
        head = (f"scenelora: multiplicity {self.method.value} ({_NAMES[self.method]}) "
                f"over {self.family} checks")
        if not self.undecided:
            return [f"{head}: every decision holds"]
        out = [f"{head}: {len(self.undecided)} decision{'s' * (len(self.undecided) != 1)} "
               f"no longer hold{'s' * (len(self.undecided) == 1)} (now inconclusive):"]
        out += [f"  {node} (was {status})" for node, status in self.undecided]
        return out


def adjust_records(records: Sequence[Mapping[str, Any]], method: Multiplicity | str
                   ) -> tuple[list[dict[str, Any]], FamilyResult]:
    """*records* (results-document records, each with its ``verdict`` dict) with their
    verdicts adjusted by *method*; the input is not modified."""
    method = Multiplicity(method)
    out = [copy.deepcopy(dict(r)) for r in records]
    members = [i for i, r in enumerate(out) if _pvalue(r) is not None]
    if not members:
        return out, FamilyResult(method, 0)
    raw = [_pvalue(out[i]) for i in members]
    adjusted = adjust(raw, method)
    undecided: list[tuple[str, str]] = []
    for i, p, q in zip(members, raw, adjusted, strict=True):
        verdict = out[i]["verdict"]
        detail = verdict.setdefault("detail", {})
        detail["multiplicity"] = method.value
        detail["p_adjusted"] = float(q)
        confidence = float(verdict.get("confidence", 0.95))
        if method is Multiplicity.NONE or verdict.get("status") not in ("pass", "fail"):
            continue
        if not decided_after(p, float(q), confidence):
            undecided.append((str(out[i].get("id") or verdict.get("check")), verdict["status"]))
            detail["reason"] = (f"{verdict['status']} at {confidence * 100:g}% alone (p={fmt_number(p)}), "
                                f"but not after {_NAMES[method]} over {len(members)} checks "
                                f"(adjusted p={fmt_number(float(q))})")
            detail["status_alone"] = verdict["status"]
            verdict["status"] = "inconclusive"
    return out, FamilyResult(method, len(members), tuple(undecided))


def _pvalue(record: Mapping[str, Any]) -> float | None:
    value = ((record.get("verdict") or {}).get("detail") or {}).get("p_value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value <= 1 else None
