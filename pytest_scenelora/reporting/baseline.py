"""The gate: this run against a stored baseline, check by check.

A check *regresses* when its score moves the wrong way by more than its ``tolerance``
(a per-check suite key; by default its kind's, :attr:`~.checks.kind.CheckKind.tolerance`) **and** the move is
significant: the confidence interval of the change, from a paired bootstrap over the
per-sample scores, excludes zero. Samples are seeded, so sample *i* of the baseline and
sample *i* of the candidate answer the same prompt with the same seed; pairing them
removes the prompt-to-prompt spread from the comparison. When the sample counts differ
(a suite changed ``samples:``) the two means are bootstrapped independently instead.
Deterministic checks (``merge_equivalence``, scored by the max over probes) have no
noise: their change is exact.

Success-rate checks (0/1 samples, judged with the Wilson interval) are compared with
McNemar's exact test on the discordant pairs instead: at the sample counts suites use,
a bootstrap of 0/1 differences is not exact, and only the pairs where the two runs
disagree carry evidence of a change (:mod:`~.scoring.paired`).

Two framings (``--scenelora-regression``):

``drop`` (the default)
    A check regresses when it got worse by more than its tolerance *and* the change is
    significant. The burden of proof is on the alarm: a noisy check never fails the gate
    for lack of evidence. Use it to catch real regressions without flaky gates.
``non-inferiority``
    A check must *show* it is no worse than the baseline by more than its tolerance: it
    regresses unless the upper confidence bound of its drop is below the tolerance. The
    burden of proof is on the candidate (regulators' framing for a generic drug); too few
    samples to bound the drop fail the gate. Use it for releases, where "we could not
    tell" must not ship.

An improvement is reported, never failed. Pure functions; the baseline file itself is
written by :func:`update_baseline` (atomic, under a file lock).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import file_lock
from ..scoring.paired import non_inferior, paired_rates
from ..scoring.verdict import fmt_number
from .results import load_document, merge_documents, write_document

__all__ = ["Change", "Comparison", "Framing", "compare_documents", "compare_record", "paired_bootstrap",
           "record_tolerance", "update_baseline"]

DEFAULT_RESAMPLES = 4000


class Change(str, enum.Enum):
    REGRESSED = "regressed"
    IMPROVED = "improved"
    UNCHANGED = "unchanged"  # within tolerance, or not significant
    NEW = "new"  # not in the baseline
    MISSING = "missing"  # in the baseline, not in this run


class Framing(str, enum.Enum):
    """What a regression is (``--scenelora-regression``); see the module's docstring."""

    DROP = "drop"
    NON_INFERIORITY = "non-inferiority"


def paired_bootstrap(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    seed: int,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[float, float, float, bool]:
    """(mean change, CI low, CI high, paired) of ``candidate - baseline``.

    Paired (the same resampled indices for both) when the lengths match; independent
    resampling of each mean otherwise. Fewer than two samples on either side give an
    unbounded interval: nothing can be significant on one sample.
    """
    delta, low, high, paired, _p = _paired_bootstrap(baseline, candidate, seed=seed, confidence=confidence,
                                                     resamples=resamples)
    return delta, low, high, paired


def _paired_bootstrap(baseline, candidate, *, seed: int, confidence: float, resamples: int
                      ) -> tuple[float, float, float, bool, float]:
    """:func:`paired_bootstrap` and the two-sided p-value of "no change" that matches its
    interval (the share of resampled changes on the far side of zero, doubled)."""
    a = np.asarray(baseline, dtype=np.float64).ravel()
    b = np.asarray(candidate, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("a comparison needs samples on both sides")
    delta = float(b.mean() - a.mean())
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return delta, math.nan, math.nan, a.size == b.size, math.nan
    if a.size < 2 or b.size < 2:
        return delta, -math.inf, math.inf, a.size == b.size, 1.0
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2
    if a.size == b.size:
        diffs = b - a
        if np.all(diffs == diffs[0]):
            return delta, float(diffs[0]), float(diffs[0]), True, 1.0 if diffs[0] == 0 else 0.0
        idx = rng.integers(0, diffs.size, size=(resamples, diffs.size))
        means = diffs[idx].mean(axis=1)
        paired = True
    else:
        means = (b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1)
                 - a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1))
        paired = False
    low, high = np.quantile(means, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return delta, float(low), float(high), paired, p_value


@dataclass(frozen=True)
class Comparison:
    """One check of one adapter, this run against the baseline."""

    id: str
    name: str
    adapter: str
    change: Change
    baseline_score: float | None
    score: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    tolerance: float
    higher_is_better: bool = True
    confidence: float = 0.95
    paired: bool = True
    exact: bool = False
    baseline_date: str = ""
    test: str = "bootstrap"  # "bootstrap", "mcnemar" (0/1 samples), or "exact" (no noise)
    p_value: float | None = None  # two-sided, of "no change"
    lost: int | None = None  # McNemar: pairs the baseline got right and the candidate wrong
    gained: int | None = None  # ... and the other way round
    framing: str = Framing.DROP.value
    worse_bound: float | None = None  # upper confidence bound of how much worse (non-inferiority)
    family: int = 1  # comparisons in the run, when significance was adjusted for their number
    judged_before: str = ""  # NEW as the baseline judged another statistic: "a success rate" or "a score"

    @property
    def regressed(self) -> bool:
        return self.change is Change.REGRESSED

    def line(self) -> str:
        """One line, e.g.
        ``Δ42_poetic scene_holds: 0.30 → 0.15 (−0.15, 95% CI −0.19..−0.11), baseline of 2025-06-01``"""
        head = f"{self.adapter} {self.name}"
        of = f"baseline of {self.baseline_date or 'unknown date'}"
        if self.change is Change.NEW and self.judged_before:
            now = "a score" if self.judged_before == "a success rate" else "a success rate"
            before = f"{self.judged_before} here ({fmt_number(self.baseline_score)})"
            return (f"{head}: {fmt_number(self.score)} (new: the {of} judged {before}, "
                    f"this run {now}; not compared: update the baseline)")
        if self.change is Change.NEW:
            return f"{head}: {fmt_number(self.score)} (new: not in the {of})"
        if self.change is Change.MISSING:
            return f"{head}: not run (was {fmt_number(self.baseline_score)} in the {of})"
        if self.exact or self.ci_low is None or self.ci_high is None:
            evidence = f"{signed(self.delta)}, exact" if self.exact else signed(self.delta)
        elif self.test == "mcnemar":
            evidence = (f"{signed(self.delta)}, McNemar exact p={fmt_p(self.p_value)}: "
                        f"{self.lost} lost, {self.gained} gained")
        else:
            evidence = (f"{signed(self.delta)}, {self.confidence * 100:g}% CI "
                        f"{signed(self.ci_low)}..{signed(self.ci_high)}")
        if self.family > 1 and not self.exact:
            evidence += f"; significant only at p <= {fmt_p((1 - self.confidence) / self.family)} " \
                        f"over {self.family} checks"
        word = {Change.REGRESSED: "", Change.IMPROVED: "improved ", Change.UNCHANGED: ""}[self.change]
        before, after = fmt_number(self.baseline_score), fmt_number(self.score)
        line = f"{head}: {word}{before} → {after} ({evidence}), {of}"
        if self.framing == Framing.NON_INFERIORITY.value and self.worse_bound is not None:
            shown = "shown" if self.change is not Change.REGRESSED else "not shown"
            line += (f"; no worse by {fmt_number(self.tolerance)}: {shown} (worse by at most "
                     f"{fmt_number(self.worse_bound)}, {self.confidence * 100:g}% bound)")
        return line

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["change"] = self.change.value
        for key in ("baseline_score", "score", "delta", "ci_low", "ci_high", "p_value", "worse_bound"):
            value = out[key]
            out[key] = None if value is None or not math.isfinite(value) else float(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        fields = dict(data)
        fields["change"] = Change(fields["change"])
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


def fmt_p(p: float | None) -> str:
    """A p-value as reports print it: two significant digits, ``<0.0001`` below that."""
    if p is None or not math.isfinite(p):
        return "nan"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


def signed(x: float | None) -> str:
    """``+0.19`` / ``−0.19`` (a real minus sign, as a report should print it)."""
    if x is None or not math.isfinite(x):
        return fmt_number(x)
    text = fmt_number(abs(x))
    return ("−" if x < 0 else "+") + text


def _score(verdict: Mapping[str, Any]) -> float:
    value = verdict.get("score")
    return math.nan if value is None else float(value)


def _samples(verdict: Mapping[str, Any]) -> np.ndarray:
    return np.array([math.nan if s is None else float(s) for s in verdict.get("samples") or ()],
                    dtype=np.float64)


def record_tolerance(*records: Mapping[str, Any] | None) -> float:
    """The strictest tolerance the records carry, 0 when none carries one.

    The stricter side decides because the candidate's record is written by whatever suite
    the candidate ran: taking its tolerance (``tolerance: 100`` in a pull request's suite)
    would let the change under test loosen its own gate. A tolerance that is not a finite
    number ≥ 0 (NaN compares false with every drop: nothing would ever regress) is ignored.
    """
    given = []
    for record in records:
        value = None if record is None else record.get("tolerance")
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) and value >= 0:
            given.append(float(value))
    return min(given, default=0.0)

def _paired_interval(old: Mapping[str, Any], new: Mapping[str, Any], old_samples: np.ndarray,
                     new_samples: np.ndarray, delta: float, extra: dict[str, Any], *, exact: bool,
                     confidence: float, seed: int, resamples: int) -> tuple[float, float, bool, Any]:
    """(low, high, paired, McNemar result or None): the interval of candidate - baseline.
    Exact scores are their own interval; success rates that pair up get McNemar's exact
    test and an exact interval of the paired change; other scores the paired bootstrap.
    The test used and its p-value go into *extra*."""
    if exact:
        extra["test"] = "exact"
        return delta, delta, True, None
    if _is_rate(old, old_samples) and _is_rate(new, new_samples) and old_samples.size == new_samples.size:
        mcnemar = paired_rates(old_samples, new_samples, confidence=confidence)
        extra.update(test="mcnemar", p_value=mcnemar.p_value, lost=mcnemar.b, gained=mcnemar.c)
        return -mcnemar.high, -mcnemar.low, True, mcnemar  # of candidate - baseline
    _mean_delta, low, high, paired, p_value = _paired_bootstrap(
        old_samples, new_samples, seed=seed, confidence=confidence, resamples=resamples)
    extra.update(test="bootstrap", p_value=p_value)
    return low, high, paired, None


def _significant(delta: float, low: float, high: float, p_value: float | None, mcnemar: Any, *,
                 hib: bool, confidence: float, family: int) -> tuple[bool, bool]:
    """(significantly worse, significantly better): by the p-value at the family's
    Bonferroni level when *family* > 1, by McNemar's p-value for paired rates, else by
    which side of zero the interval lies."""
    if family > 1:
        significant = p_value is not None and p_value <= (1 - confidence) / family
        went_down = (delta < 0) == hib
        return significant and went_down, significant and not went_down
    if mcnemar is not None:
        significant = mcnemar.p_value <= 1 - confidence and mcnemar.b != mcnemar.c
        lost_more = (mcnemar.b > mcnemar.c) == hib
        return significant and lost_more, significant and not lost_more
    return (high < 0, low > 0) if hib else (low > 0, high < 0)



def compare_record(
    baseline: Mapping[str, Any] | None,
    candidate: Mapping[str, Any] | None,
    *,
    seed: int = 0,
    baseline_date: str = "",
    tolerance: float | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    framing: Framing | str = Framing.DROP,
    family: int = 1,
) -> Comparison:
    """Compare one record of a results document with its baseline record.

    Success rates whose samples pair up are compared with McNemar's exact test and an
    exact interval of the paired change; other scores with the paired bootstrap.
    *framing* says what a regression is (the module's docstring).

    *family* > 1 says this comparison is one of that many in the run
    (``--scenelora-multiplicity``): a change is then significant only when its p-value is
    at most ``(1 - confidence) / family`` (Bonferroni). A check item is judged as it runs,
    before the others' p-values exist, so the step-down procedures cannot apply here;
    Bonferroni controls the family-wise error and the false discovery rate both, at the
    price of some power.

    *tolerance* defaults to the smaller of the two records' own (:func:`record_tolerance`):
    a candidate cannot widen the tolerance it is judged with by editing its suite, and a
    suite that tightens it takes effect at once.
    """
    some = candidate or baseline
    assert some is not None, "compare_record needs at least one side"
    verdict = some["verdict"]
    if tolerance is None:
        tolerance = record_tolerance(baseline, candidate)
    common = {"id": some["id"], "name": some.get("name") or verdict["check"],
              "adapter": some.get("adapter") or verdict["subject"], "tolerance": tolerance,
              "higher_is_better": bool(verdict["higher_is_better"]),
              "confidence": _stated_confidence(verdict), "baseline_date": baseline_date}
    if baseline is None or candidate is None:
        return Comparison(change=Change.NEW if baseline is None else Change.MISSING,
                          baseline_score=None if baseline is None else _score(baseline["verdict"]),
                          score=None if candidate is None else _score(candidate["verdict"]),
                          delta=None, ci_low=None, ci_high=None, **common)
    framing = Framing(framing)
    old, new = baseline["verdict"], candidate["verdict"]
    old_score, new_score = _score(old), _score(new)
    old_rate, new_rate = _judged_a_rate(old), _judged_a_rate(new)
    if None not in (old_rate, new_rate) and old_rate != new_rate:
        # the check's statistic changed between the two runs (registers_unpack judged a share
        # of samples, then a mean margin): the two scores measure different things
        judged_before = "a success rate" if old_rate else "a score"
        return Comparison(change=Change.NEW, baseline_score=old_score, score=new_score, delta=None,
                          ci_low=None, ci_high=None, judged_before=judged_before, **common)
    hib = common["higher_is_better"]
    confidence = common["confidence"]
    exact = "max" in ((old.get("detail") or {}).get("statistic"), (new.get("detail") or {}).get("statistic"))
    old_samples, new_samples = _common_samples(old, new)
    if old_samples.size != _samples(old).size or new_samples.size != _samples(new).size:
        # sequential sampling drew more on one side: compare what both drew
        old_score, new_score = float(old_samples.mean()), float(new_samples.mean())
    extra: dict[str, Any] = {"framing": framing.value}
    delta = new_score - old_score
    exact = exact or old_samples.size == 0 or new_samples.size == 0
    low, high, paired, mcnemar = _paired_interval(old, new, old_samples, new_samples, delta, extra,
                                                  exact=exact, confidence=confidence, seed=seed,
                                                  resamples=resamples)
    if not math.isfinite(old_score):
        change = Change.UNCHANGED if not math.isfinite(new_score) else Change.IMPROVED
    elif not math.isfinite(new_score):
        change = Change.REGRESSED  # a broken candidate (NaN scores) is the worst regression
    else:
        worse = -delta if hib else delta
        if family > 1 and not exact:
            extra["family"] = family
        worse_significant, better_significant = _significant(
            delta, low, high, extra.get("p_value"), mcnemar, hib=hib, confidence=confidence,
            family=family if not exact else 1)
        worse_bound = worse if exact else (-low if hib else high)
        if framing is Framing.NON_INFERIORITY:
            extra["worse_bound"] = worse_bound
            regressed = not non_inferior(worse_bound, tolerance)
        else:
            regressed = worse > tolerance and worse_significant
        if regressed:
            change = Change.REGRESSED
        elif -worse > tolerance and better_significant:
            change = Change.IMPROVED
        else:
            change = Change.UNCHANGED
    return Comparison(change=change, baseline_score=old_score, score=new_score, delta=delta,
                      ci_low=low, ci_high=high, paired=paired, exact=exact, **common, **extra)


def _stated_confidence(verdict: Mapping[str, Any]) -> float:
    """The confidence a verdict states: the suite's, not the stricter one of a sequential
    check's later look (``detail.sequential.confidence``)."""
    sequential = (verdict.get("detail") or {}).get("sequential") or {}
    return float(sequential.get("confidence") or verdict.get("confidence", 0.95))


def _common_samples(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Both verdicts' samples, cut to the ones both runs drew when sequential sampling drew
    more in one of them, so sample *i* still pairs with sample *i*.

    A check lists its samples prompt by prompt (topic by topic, scene by scene), ``samples``
    of each; with the same number of prompts on both sides, each prompt's first ``k``
    samples are kept, ``k`` the smaller ``samples`` of the two runs; with the same
    ``samples`` but more prompts on one side (a check that grows its prompts), the prompts
    both list in ``per_scene`` are kept, paired by name. Anything else is compared as it stands
    (unpaired when the counts differ).
    """
    a, b = _samples(old), _samples(new)
    if a.size == b.size:
        return a, b
    per = [((v.get("detail") or {}).get("sequential") or {}).get("samples") for v in (old, new)]
    if not all(isinstance(k, int) and k > 0 for k in per):
        return a, b
    prompts = [a.size / per[0], b.size / per[1]]
    if prompts[0] != prompts[1] and per[0] == per[1] and all(p.is_integer() for p in prompts):
        # a check that grew its prompts (unseen_scenes draws more scenes): the scenes both
        # runs tried pair sample for sample, whatever order each run tried them in
        blocks = _shared_prompts(old, new, [int(p) for p in prompts])
        if blocks:
            k = per[0]
            old_rows = np.concatenate([np.arange(i * k, (i + 1) * k) for i, _ in blocks])
            new_rows = np.concatenate([np.arange(j * k, (j + 1) * k) for _, j in blocks])
            return a[old_rows], b[new_rows]
    if prompts[0] != prompts[1] or not prompts[0].is_integer():
        return a, b
    p, k = int(prompts[0]), min(per)
    return a.reshape(p, per[0])[:, :k].ravel(), b.reshape(p, per[1])[:, :k].ravel()


def _shared_prompts(old: Mapping[str, Any], new: Mapping[str, Any],
                    counts: list[int]) -> list[tuple[int, int]]:
    """The prompts two verdicts both tried, as (index in *old*, index in *new*) in *old*'s
    order, from the ``per_scene`` list a check that grows its prompts keeps in sample
    order; empty when either has none, or lists other than its *counts* of prompts."""
    lists = [(v.get("detail") or {}).get("per_scene") for v in (old, new)]
    if not all(isinstance(x, list) and len(x) == n for x, n in zip(lists, counts, strict=True)):
        return []
    keys = [[x.get("scene") if isinstance(x, Mapping) else None for x in entries] for entries in lists]
    where = {key: j for j, key in enumerate(keys[1]) if isinstance(key, str)}
    if len(where) != len(keys[1]):  # a scene listed twice (or unnamed): no way to pair it
        return []
    return [(i, where[key]) for i, key in enumerate(keys[0]) if key in where]


def _judged_a_rate(verdict: Mapping[str, Any]) -> bool | None:
    """Whether a verdict judged a success rate (a Wilson interval), a score (another
    interval), or does not say (no interval recorded: an exact check, or an older file)."""
    interval = (verdict.get("detail") or {}).get("interval")
    return str(interval).startswith("wilson") if interval else None


def _is_rate(verdict: Mapping[str, Any], samples: np.ndarray) -> bool:
    """Whether a verdict judged a success rate (its samples 0 or 1, its interval Wilson's)."""
    return bool(_judged_a_rate(verdict)) and bool(np.isin(samples, (0.0, 1.0)).all())


def baseline_date(document: Mapping[str, Any]) -> str:
    return str(document.get("created") or "")[:10]


def compare_documents(
    baseline: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    seed: int | None = None,
    framing: Framing | str = Framing.DROP,
) -> list[Comparison]:
    """Every record of either document compared, in id order (the baseline's seed by default)."""
    if seed is None:
        seed = int((candidate.get("environment") or {}).get("seed") or 0)
    old = {r["id"]: r for r in baseline["results"]}
    new = {r["id"]: r for r in candidate["results"]}
    date = baseline_date(baseline)
    return [compare_record(old.get(key), new.get(key), seed=seed, baseline_date=date, framing=framing)
            for key in sorted(old.keys() | new.keys())]


def update_baseline(path: Path, document: Mapping[str, Any]) -> dict[str, Any]:
    """Store *document* as the baseline at *path*, keeping records this run did not
    produce; atomic, and under a file lock so two sessions never lose each other's
    records. Returns what was written."""
    path = Path(path)
    with file_lock(path):
        old = load_document(path, what="baseline") if path.exists() else None
        merged = merge_documents(old, document)
        merged["baseline"] = None
        merged["results"] = [{k: v for k, v in r.items() if k != "baseline"} for r in merged["results"]]
        write_document(path, merged)
    return merged
