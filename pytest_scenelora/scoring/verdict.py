"""Verdicts: what a check concludes from N samples, and how it says so in the user's terms.

:func:`decide` implements the rule of DESIGN.md ("Check semantics"): a check passes when
its confidence interval's lower bound clears the threshold (the upper bound, for
lower-is-better scores), fails when the interval misses it entirely, and is otherwise
inconclusive, with a rough estimate of how many samples would decide it.

Intervals: success rates (``decide(..., rate=True)``, samples of 0 or 1) use the Wilson
score interval, which stays honest at 0% and 100% (a percentile bootstrap collapses to a point
when all samples agree, so 5 successes out of 5 would pass any threshold); every other
score uses a seeded percentile bootstrap of the mean (:func:`~.scoring.bootstrap_ci`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import CheckInputError
from .statistics import (
    binomial_pvalue,
    bootstrap_ci,
    bootstrap_pvalue,
    cluster_count,
    cluster_t_ci,
    cluster_t_pvalue,
    wilson_ci,
)

__all__ = [
    "SAMPLES_NEEDED_CAP",
    "CheckInputError",
    "Sample",
    "Status",
    "Verdict",
    "decide",
    "jsonable",
    "pick_worst",
    "rejudge",
]

#: An inconclusive verdict never asks for more samples than this.
SAMPLES_NEEDED_CAP = 10_000

#: How much of the worst sample's text a failure message shows.
TEXT_PREVIEW = 160


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _float_or_nan(x: float | None, *, missing: float = math.nan) -> float:
    return missing if x is None else float(x)


def jsonable(value: Any) -> Any:
    """*value* with numpy scalars and arrays, tuples and non-finite floats made JSON-safe."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite_or_none(float(value))
    if isinstance(value, enum.Enum):
        return value.value
    return value


@dataclass(frozen=True)
class Sample:
    """One generated sample singled out for the report: the worst one, usually."""

    index: int
    score: float
    text: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def describe(self) -> str:
        """``#3 (score 0.00, topic: the harbour): "The tide therefore..."``"""
        facts = [f"score {fmt_number(self.score)}"] + [f"{k}: {_fmt_any(v)}" for k, v in self.context.items()]
        line = f"#{self.index} ({', '.join(facts)})"
        if self.text is not None:
            line += f": {_quote(self.text)}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "score": _finite_or_none(self.score), "text": self.text,
                "context": jsonable(dict(self.context))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        return cls(index=int(data["index"]), score=_float_or_nan(data.get("score")),
                   text=data.get("text"), context=dict(data.get("context") or {}))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check on one subject (an adapter, or a scene), with its evidence.

    ``samples`` keeps every per-sample score, so a later run can compare against a stored
    baseline sample by sample. ``detail`` is check-specific and JSON-serialisable.
    """

    check: str
    subject: str
    score: float
    ci_low: float
    ci_high: float
    threshold: float
    higher_is_better: bool
    status: Status
    samples: tuple[float, ...]
    n: int
    samples_needed: int | None = None
    worst: Sample | None = field(default=None, hash=False)
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)
    confidence: float = 0.95

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def name(self) -> str:
        """``check[subject]``, the way the terminal report and node ids show it."""
        return f"{self.check}[{self.subject}]"

    def explain(self) -> str:
        """The verdict in the user's terms: score, interval, threshold, worst sample, and,
        when inconclusive, how many samples would decide it."""
        op = ">=" if self.higher_is_better else "<="
        statistic = self.detail.get("statistic", "mean")
        if statistic == "max":
            evidence = f"max over {self.n} probes"
        elif not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)):
            evidence = f"n={self.n}, no interval"
        else:
            pct = f"{self.confidence * 100:g}%"
            evidence = f"{pct} CI {fmt_number(self.ci_low)}..{fmt_number(self.ci_high)}, n={self.n}"
            clusters = self.detail.get("clusters")
            if isinstance(clusters, int):
                evidence += f" in {clusters} cluster{'s' if clusters != 1 else ''}"
        lines = [f"{self.name}: {self.status.value.upper()}  score {fmt_number(self.score)} ({evidence}), "
                 f"needs {op} {fmt_number(self.threshold)}"]
        reason = self.detail.get("reason")
        if reason and self.status is not Status.PASS:
            lines.append(f"  {reason}")
        note = self.detail.get("cluster_note")
        if note:
            lines.append(f"  {note}")
        seq = self.detail.get("sequential")
        if isinstance(seq, Mapping) and seq.get("looks", 1) > 1:
            grows = str(seq.get("grows") or "samples")
            lines.append(f"  sequential: {seq.get('looks')} looks, {grows} {seq.get('first')} up to "
                         f"{seq.get(grows)} (max_{grows} {seq.get(f'max_{grows}')}), stopped: "
                         f"{seq.get('stop')}; each later look at "
                         f"{float(seq.get('confidence_per_look', self.confidence)) * 100:.3g}%")
        if self.worst is not None and self.status is not Status.PASS:
            lines.append(f"  worst sample {self.worst.describe()}")
        if self.status is Status.INCONCLUSIVE:
            if self.samples_needed is None:
                lines.append("  inconclusive: too few samples to estimate the spread; draw more")
            elif self.samples_needed >= SAMPLES_NEEDED_CAP:
                lines.append(f"  inconclusive: the score sits on the threshold; even "
                             f"{SAMPLES_NEEDED_CAP} samples may not decide it")
            else:
                lines.append(f"  inconclusive: about {self.samples_needed} samples would decide it")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers become ``null``)."""
        return {
            "check": self.check,
            "subject": self.subject,
            "status": self.status.value,
            "score": _finite_or_none(self.score),
            "ci_low": _finite_or_none(self.ci_low),
            "ci_high": _finite_or_none(self.ci_high),
            "threshold": self.threshold,
            "higher_is_better": self.higher_is_better,
            "confidence": self.confidence,
            "n": self.n,
            "samples_needed": self.samples_needed,
            "samples": [_finite_or_none(s) for s in self.samples],
            "worst": None if self.worst is None else self.worst.to_dict(),
            "detail": jsonable(dict(self.detail)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        worst = data.get("worst")
        return cls(
            check=data["check"],
            subject=data["subject"],
            score=_float_or_nan(data.get("score")),
            ci_low=_float_or_nan(data.get("ci_low"), missing=-math.inf),
            ci_high=_float_or_nan(data.get("ci_high"), missing=math.inf),
            threshold=float(data["threshold"]),
            higher_is_better=bool(data["higher_is_better"]),
            status=Status(data["status"]),
            samples=tuple(_float_or_nan(s) for s in data.get("samples", ())),
            n=int(data["n"]),
            samples_needed=data.get("samples_needed"),
            worst=None if worst is None else Sample.from_dict(worst),
            detail=dict(data.get("detail") or {}),
            confidence=float(data.get("confidence", 0.95)),
        )


# ------------------------------------------------------------------------------- decide


def pick_worst(
    scores: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = True,
    evidence: Sequence[float] | np.ndarray | None = None,
    among: Sequence[int] | None = None,
    texts: Sequence[str] | None = None,
    contexts: Sequence[Mapping[str, Any]] | None = None,
) -> Sample | None:
    """The sample that argues most against the subject.

    Lowest score first (highest when lower is better), ties broken by the lowest
    *evidence* (a continuous margin behind a 0/1 score), then by position. Non-finite
    scores count as the worst of all. *among* restricts the choice to those indices
    (e.g. the worst topic's samples).
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.size == 0:
        return None
    sign = 1.0 if higher_is_better else -1.0
    ev = np.zeros_like(arr) if evidence is None else sign * np.asarray(evidence, dtype=np.float64)
    candidates = range(arr.size) if among is None else list(among)

    def badness(i: int) -> tuple[float, float, int]:
        s = sign * arr[i]
        e = ev[i]
        return (s if math.isfinite(s) else -math.inf, e if math.isfinite(e) else -math.inf, i)

    worst = min(candidates, key=badness, default=None)
    if worst is None:
        return None
    return Sample(
        index=int(worst),
        score=float(arr[worst]),
        text=None if texts is None else texts[worst],
        context={} if contexts is None else dict(contexts[worst]),
    )


def _estimate_samples_needed(n: int, low: float, high: float, score: float, threshold: float) -> int | None:
    # The interval's half-width shrinks like 1/sqrt(n): it reaches the gap between the
    # score and the threshold after about n * (halfwidth / gap)^2 samples.
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    half = (high - low) / 2
    gap = abs(score - threshold)
    if gap <= 0 or half <= 0:
        return SAMPLES_NEEDED_CAP
    need = math.ceil(n * (half / gap) ** 2)
    return int(min(SAMPLES_NEEDED_CAP, max(n + 1, need)))


def _interval(arr: np.ndarray, threshold: float, *, rate: bool, clusters: Sequence[object] | None,
              confidence: float, resamples: int, seed: int) -> tuple[float, float, float, str]:
    """(low, high, p-value, the interval's name) of the mean of finite *arr*."""
    clustered = clusters is not None and cluster_count(clusters) >= 2
    n = int(arr.size)
    if rate:
        low, high = wilson_ci(int(arr.sum()), n, confidence=confidence)
        p_value = binomial_pvalue(int(arr.sum()), n, threshold)
        if clustered:
            c_low, c_high = cluster_t_ci(arr, clusters, confidence=confidence)
            low, high = max(0.0, min(low, c_low)), min(1.0, max(high, c_high))
            p_value = max(p_value, cluster_t_pvalue(arr, clusters, threshold))
        return low, high, p_value, "wilson+clustered t" if clustered else "wilson"
    if clustered:
        low, high = cluster_t_ci(arr, clusters, confidence=confidence)
        return low, high, cluster_t_pvalue(arr, clusters, threshold), "clustered t"
    low, high = bootstrap_ci(arr, confidence=confidence, resamples=resamples, seed=seed)
    return low, high, bootstrap_pvalue(arr, threshold, resamples=resamples, seed=seed), "bootstrap"


def _judge(low: float, high: float, threshold: float, higher_is_better: bool) -> Status:
    clears, misses = (low >= threshold, high < threshold) if higher_is_better else (
        high <= threshold, low > threshold)
    return Status.PASS if clears else Status.FAIL if misses else Status.INCONCLUSIVE


#: The intervals :func:`rejudge` can recompute from a verdict alone.
REJUDGEABLE = ("wilson", "wilson+clustered t", "clustered t", "bootstrap")


def rejudge(verdict: Verdict, *, confidence: float, seed: int, resamples: int = 2000) -> Verdict:
    """*verdict* judged again from its own samples at another *confidence*, with the
    interval it was judged with (its ``detail["interval"]``, one of :data:`REJUDGEABLE`;
    clustered intervals use the ``cluster_labels`` :func:`decide` kept).

    Sequential sampling uses it: a check kind judges at the suite's confidence, and each
    later look spends a share of the error (:mod:`~.scoring.sequential`).
    """
    kind = verdict.detail.get("interval")
    if kind not in REJUDGEABLE:
        raise ValueError(f"{verdict.name}: its interval {kind!r} cannot be recomputed from its samples")
    arr = np.asarray(verdict.samples, dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).all():
        return verdict
    labels = verdict.detail.get("cluster_labels")
    clusters = list(labels) if "clustered" in kind and labels is not None else None
    low, high, p_value, _ = _interval(arr, verdict.threshold, rate=kind.startswith("wilson"),
                                      clusters=clusters, confidence=confidence, resamples=resamples,
                                      seed=seed)
    status = _judge(low, high, verdict.threshold, verdict.higher_is_better)
    needed = (_estimate_samples_needed(verdict.n, low, high, verdict.score, verdict.threshold)
              if status is Status.INCONCLUSIVE else None)
    detail = {**verdict.detail, "p_value": p_value}
    return replace(verdict, ci_low=low, ci_high=high, status=status, samples_needed=needed, detail=detail,
                   confidence=confidence)


def decide(
    check: str,
    subject: str,
    samples: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    higher_is_better: bool = True,
    seed: int,
    confidence: float = 0.95,
    texts: Sequence[str] | None = None,
    contexts: Sequence[Mapping[str, Any]] | None = None,
    detail: Mapping[str, Any] | None = None,
    evidence: Sequence[float] | np.ndarray | None = None,
    worst: Sample | None = None,
    resamples: int = 2000,
    rate: bool = False,
    clusters: Sequence[object] | None = None,
) -> Verdict:
    """Judge per-sample scores against a threshold with a seeded confidence interval.

    Pass when the interval's lower bound reaches *threshold* (its upper bound, for
    lower-is-better scores), fail when the whole interval misses it, inconclusive
    otherwise. A non-finite sample (NaN logits, say) fails the check outright: it means
    something upstream is broken, and no interval is computed from it.

    ``rate=True`` says the samples are successes (each 0 or 1) and the score a success
    rate, judged with the Wilson interval; otherwise the interval is a bootstrap.

    *clusters* (one label per sample: the scene, topic or prompt it was drawn for) says
    which samples share a difficulty. With two or more clusters the interval is the
    cluster-robust t interval (:func:`~.statistics.cluster_t_ci`), which rests on the
    number of clusters rather than samples; for a success rate, the wider of that and the
    Wilson interval (the Wilson interval keeps 100% honest, the clustered one the
    dependence). ``detail["clusters"]`` says how many there were; with one cluster the
    interval is the unclustered one and ``detail["cluster_note"]`` says it speaks for
    that cluster only.

    ``detail["p_value"]`` is the two-sided p-value of "the mean equals the threshold",
    which is what a run's multiplicity adjustment works on: the one matching the bootstrap
    or clustered interval, and for success rates the exact binomial test's (a little more
    conservative than the Wilson interval, which is too liberal in the far tails an
    adjustment looks into).

    *texts* and *contexts* (one per sample) label the worst sample; *evidence* (one
    continuous value per sample) ranks samples whose scores tie, e.g. the margins behind
    0/1 successes; *worst* overrides the choice altogether.
    """
    arr = _checked_samples(f"{check}[{subject}]", samples, rate=rate, texts=texts, contexts=contexts,
                           evidence=evidence, clusters=clusters)
    n = int(arr.size)
    info: dict[str, Any] = dict(detail or {})
    if texts is not None:  # every sample's text, by index, for the HTML report's details
        info.setdefault("sample_texts", [None if t is None else str(t) for t in texts])
    score, low, high, status = _decision(arr, float(threshold), info, higher_is_better=higher_is_better,
                                         rate=rate, clusters=clusters,
                                         confidence=confidence, resamples=resamples, seed=seed)
    needed = (_estimate_samples_needed(n, low, high, score, threshold)
              if status is Status.INCONCLUSIVE else None)
    if worst is None:
        worst = pick_worst(arr, higher_is_better=higher_is_better, evidence=evidence,
                           texts=texts, contexts=contexts)
    return Verdict(
        check=check,
        subject=subject,
        score=score,
        ci_low=low,
        ci_high=high,
        threshold=float(threshold),
        higher_is_better=higher_is_better,
        status=status,
        samples=tuple(float(x) for x in arr),
        n=n,
        samples_needed=needed,
        worst=worst,
        detail=info,
        confidence=confidence,
    )

def _checked_samples(where: str, samples: Sequence[float] | np.ndarray, *, rate: bool,
                     **per_sample: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    """*samples* as a float array, refused in one line when empty, when a per-sample list
    (texts, contexts, evidence, clusters) has another length, or when a rate's samples are
    not all 0 or 1."""
    arr = np.asarray(samples, dtype=np.float64).ravel()
    n = int(arr.size)
    if n == 0:
        raise CheckInputError(f"{where}: no samples to judge; generate at least one output")
    for what, seq in per_sample.items():
        if seq is not None and len(seq) != n:
            raise CheckInputError(f"{where}: {len(seq)} {what} for {n} samples")
    if rate and not np.isin(arr, (0.0, 1.0)).all():
        raise CheckInputError(f"{where}: a success rate needs samples of 0 or 1")
    return arr


def _decision(arr: np.ndarray, threshold: float, info: dict[str, Any], *, higher_is_better: bool,
              rate: bool, clusters: Sequence[object] | None, confidence: float,
              resamples: int, seed: int) -> tuple[float, float, float, Status]:
    """(score, interval low, interval high, status) of :func:`decide`; what the interval
    rests on (its kind, p-value, clusters) goes into *info*."""
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int((~finite).sum())
        info.setdefault("reason", f"{bad} of {arr.size} samples are not finite numbers (NaN or inf)")
        return math.nan, math.nan, math.nan, Status.FAIL
    groups = None if clusters is None else cluster_count(clusters)
    if groups is not None:
        info.setdefault("clusters", groups)
        info.setdefault("cluster_labels", [str(c) for c in clusters])
        if groups < 2:
            info.setdefault("cluster_note", "all samples share one cluster: the interval speaks "
                                            "for that one, not for others like it")
    low, high, p_value, kind = _interval(arr, threshold, rate=rate, clusters=clusters,
                                         confidence=confidence, resamples=resamples, seed=seed)
    info.setdefault("interval", kind)
    info.setdefault("p_value", p_value)
    return float(arr.mean()), low, high, _judge(low, high, threshold, higher_is_better)



# ---------------------------------------------------------------------------- rendering


def fmt_number(x: Any) -> str:
    """A score, bound or delta as every report prints it: two decimals, or two significant
    digits below 0.1 (so 0.004 is not ``0.00``); ``nan`` for anything that is not a number
    (a JSON field that is missing or null), ``inf``/``-inf`` as such."""
    if isinstance(x, np.floating | np.integer):
        x = x.item()
    if not isinstance(x, int | float) or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0 or abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.2g}"


def _fmt_any(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return fmt_number(float(value))
    return str(value)


def _quote(text: str, limit: int = TEXT_PREVIEW) -> str:
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 3].rstrip() + "..."
    return f'"{flat}"'
