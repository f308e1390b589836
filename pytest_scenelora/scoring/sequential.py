"""Sequential sampling: a confidence sequence for a bounded mean, and the decision rule
that looks at it after each batch of samples.

A fixed-n interval recomputed after every batch is not a 95% interval any more: each look
is another chance to cross the threshold by luck, and the error grows with the number of
looks. A *confidence sequence* holds at every sample count at once, so a check may stop
the moment it is decided. This one is the hedged betting confidence sequence of
Waudby-Smith & Ramdas ("Estimating means of bounded random variables by betting", JRSS-B
2024, the predictable plug-in ``PrPl-H``): for each candidate mean ``m`` two bettors stake
on the samples falling above or below ``m``; where their wealth reaches ``1/alpha``,
Ville's inequality rules ``m`` out, with error at most ``alpha`` over the whole sequence.
It needs known bounds on a sample (a success is 0 or 1; a cosine margin lies in -2..2)
and adapts to the spread actually seen, like an empirical-Bernstein bound but tighter.

:func:`sequential_decision` is the rule a check applies: the first look, at the suite's
``samples``, uses the check's ordinary fixed-n interval (so every verdict that was decided
at ``samples`` stays as it was); only an inconclusive first look continues, in batches,
judged by the confidence sequence. The two share the error: the fixed look errs at most
``alpha/2`` towards either side, the sequence at most ``alpha/2`` towards either side, so
a verdict is wrong at most ``alpha`` of the time (the union bound), whichever way the
truth lies.

What checks use (:mod:`~.checks.runner`) is the simpler *error-spending* form of the same
idea (``interval_at``): the looks are few and fixed in advance (every ``samples`` more, up
to ``max_samples``), so the continuation's half of the error can be split evenly over
them (Bonferroni) and each judged with the check's own interval. At ten looks that
decides more checks with fewer samples than either confidence sequence
(``benchmarks/bench_statistics.py`` measures all three), needs no bounds on a score, and
does not depend on the order a check kind lists its samples in. The confidence
sequences stay for streams judged at every sample.

Pure functions of numbers (numpy and the standard library only).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_GRID",
    "SequentialOutcome",
    "StopReason",
    "asymptotic_cs_path",
    "betting_cs",
    "betting_cs_path",
    "looks",
    "sequential_decision",
    "spending_confidence",
]

#: Candidate means tried between the bounds; the interval's ends are rounded outwards to it.
DEFAULT_GRID = 1000

#: The most a bettor stakes, as a fraction of what would ruin it (Waudby-Smith & Ramdas's c).
_MAX_STAKE = 0.5


def _validate(arr: np.ndarray, lower: float, upper: float, alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha!r} is not between 0 and 1")
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"bounds {lower!r}..{upper!r} are not a finite range")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError("a confidence sequence needs finite values")
    if arr.size and (arr.min() < lower or arr.max() > upper):
        raise ValueError(f"values {arr.min():g}..{arr.max():g} lie outside the bounds {lower:g}..{upper:g}")


def _log_capital(x: np.ndarray, m: np.ndarray, alpha: float) -> np.ndarray:
    """log of the hedged wealth at every step (rows) and candidate mean (columns), before
    the ``max`` that hedges: shape ``(2, n, len(m))``, the bettor on "above" first."""
    n = x.size
    t = np.arange(1, n + 1, dtype=np.float64)
    mu_hat = (0.5 + np.cumsum(x)) / (t + 1)  # after sample t
    sigma2 = (0.25 + np.cumsum((x - mu_hat) ** 2)) / (t + 1)
    sigma2_prev = np.concatenate(([0.25], sigma2[:-1]))  # predictable: what was known before sample t
    lam = np.sqrt(2 * math.log(2 / alpha) / (sigma2_prev * t * np.log1p(t)))
    with np.errstate(divide="ignore"):
        cap_up = np.where(m > 0, _MAX_STAKE / m, np.inf)
        cap_down = np.where(m < 1, _MAX_STAKE / (1 - m), np.inf)
    lam_up = np.minimum(lam[:, None], cap_up[None, :])
    lam_down = np.minimum(lam[:, None], cap_down[None, :])
    diff = x[:, None] - m[None, :]
    up = np.cumsum(np.log1p(lam_up * diff), axis=0)
    down = np.cumsum(np.log1p(-lam_down * diff), axis=0)
    return np.stack((up, down))


def betting_cs_path(
    values: Sequence[float] | np.ndarray,
    *,
    alpha: float = 0.05,
    lower: float = 0.0,
    upper: float = 1.0,
    grid: int = DEFAULT_GRID,
) -> tuple[np.ndarray, np.ndarray]:
    """The confidence sequence after each sample: arrays ``lows[t]``, ``highs[t]`` bound
    the mean with the first ``t + 1`` values, all of them together with probability at
    least ``1 - alpha``.

    Each bound is the intersection of all earlier ones (a confidence sequence may be
    intersected over time without losing coverage) and is rounded outwards to the grid of
    candidate means. An intersection that comes out empty (possible only inside the
    ``alpha`` of runs that miss) is reported as the point where it closed.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    _validate(arr, lower, upper, alpha)
    if grid < 2:
        raise ValueError(f"grid {grid!r} must be at least 2")
    if arr.size == 0:
        return np.empty(0), np.empty(0)
    span = upper - lower
    x = (arr - lower) / span
    m = (np.arange(grid) + 0.5) / grid  # interior points; 0 and 1 are the outermost bounds
    capital = _log_capital(x, m, alpha)
    # hedged: max(K+ / 2, K- / 2) >= 1/alpha  <=>  max(log K+, log K-) >= log(2/alpha)
    rejected = np.maximum(capital[0], capital[1]) >= math.log(2 / alpha)
    kept = ~rejected
    any_kept = kept.any(axis=1)
    first = np.where(any_kept, kept.argmax(axis=1), grid)
    last = np.where(any_kept, grid - 1 - kept[:, ::-1].argmax(axis=1), -1)
    # outwards to the neighbouring (rejected) grid point, or to the bound itself
    lows = np.where(first > 0, m[np.maximum(first - 1, 0)], 0.0)
    highs = np.where(last < grid - 1, m[np.minimum(last + 1, grid - 1)], 1.0)
    lows = np.maximum.accumulate(lows)
    highs = np.minimum.accumulate(highs)
    crossed = lows > highs
    if crossed.any():
        mid = (lows + highs) / 2
        lows = np.where(crossed, mid, lows)
        highs = np.where(crossed, mid, highs)
    return lower + span * lows, lower + span * highs


def betting_cs(
    values: Sequence[float] | np.ndarray,
    *,
    alpha: float = 0.05,
    lower: float = 0.0,
    upper: float = 1.0,
    grid: int = DEFAULT_GRID,
) -> tuple[float, float]:
    """The confidence sequence's interval after all of *values* (see :func:`betting_cs_path`).

    Unlike a fixed-n interval it stays valid however many times it was looked at before;
    with no values it is the whole range.
    """
    lows, highs = betting_cs_path(values, alpha=alpha, lower=lower, upper=upper, grid=grid)
    if lows.size == 0:
        return (float(lower), float(upper))
    return (float(lows[-1]), float(highs[-1]))


def asymptotic_cs_path(
    values: Sequence[float] | np.ndarray,
    *,
    alpha: float = 0.05,
    tightest_at: int = 100,
    start: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """The asymptotic confidence sequence of a mean after each sample (Waudby-Smith,
    Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic
    confidence sequences", Annals of Statistics 2024): the sample mean plus or minus its
    sample deviation times the Robbins normal-mixture boundary

        sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha)),

    with ``rho`` chosen to make it tightest at *tightest_at* samples.

    It needs no bounds, only a finite variance, which is why continuous scores use it:
    a betting sequence must survive a sample at the far end of the declared range (-2 for
    a cosine margin), so on scores that spread over a tenth of that range it stakes too
    little to decide anything within a few hundred samples. The price is that its
    coverage is asymptotic (the central limit theorem, made uniform over time), where the
    betting sequence's is exact; ``benchmarks/bench_statistics.py`` measures it at the
    sample counts the checks use. Its bounds begin at *start* samples (before that the
    deviation is too poorly known for a normal approximation: a sequence begun at 2
    samples misses 13% of the time instead of 5%) and are intersected over time from
    there, like :func:`betting_cs_path`'s.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha!r} is not between 0 and 1")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError("a confidence sequence needs finite values")
    if tightest_at < 1 or start < 2:
        raise ValueError(f"tightest_at {tightest_at!r} must be at least 1 and start {start!r} at least 2")
    n = arr.size
    if n == 0:
        return np.empty(0), np.empty(0)
    t = np.arange(1, n + 1, dtype=np.float64)
    mean = np.cumsum(arr) / t
    # running sample variance (ddof=1), by Welford-free cumulative sums on centred data
    centred = arr - arr[0]
    s1, s2 = np.cumsum(centred), np.cumsum(centred ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(t > 1, (s2 - s1 * s1 / t) / (t - 1), np.inf)
    sd = np.sqrt(np.maximum(var, 0.0))
    log_a = -2 * math.log(alpha)
    rho2 = (log_a + math.log(log_a + 1)) / tightest_at
    radius = np.sqrt(2 * (t * rho2 + 1) / (t * t * rho2) * np.log(np.sqrt(t * rho2 + 1) / alpha))
    with np.errstate(invalid="ignore"):
        lows = np.where(t >= start, mean - sd * radius, -np.inf)
        highs = np.where(t >= start, mean + sd * radius, np.inf)
    lows = np.maximum.accumulate(lows)
    highs = np.minimum.accumulate(highs)
    crossed = lows > highs
    if crossed.any():
        with np.errstate(invalid="ignore"):  # -inf + inf where nothing crossed
            mid = (lows + highs) / 2
        lows = np.where(crossed, mid, lows)
        highs = np.where(crossed, mid, highs)
    return lows, highs


def spending_confidence(confidence: float, looks: int) -> float:
    """The confidence of each look after the first when *looks* looks share the error:
    the first keeps ``1 - confidence`` (so it decides exactly as a fixed-n verdict), the
    others split another ``1 - confidence`` evenly. With 24 samples, then batches of 24 up
    to 240 (10 looks), each later look is a 99.44% interval."""
    if looks < 2:
        return confidence
    return 1 - (1 - confidence) / (looks - 1)


class StopReason(str, enum.Enum):
    """Why a sequential check stopped drawing samples."""

    DECIDED = "decided"  # the interval cleared or missed the threshold
    BUDGET = "budget"  # max_samples reached, still inconclusive
    FIRST_LOOK = "first look"  # decided (or not continued) at the suite's samples


def looks(first: int, batch: int, budget: int) -> list[int]:
    """The sample counts at which a sequential check looks: *first*, then every *batch*
    more, and *budget* last (``looks(24, 24, 100)`` is ``[24, 48, 72, 96, 100]``)."""
    if first < 1 or batch < 1:
        raise ValueError(f"first {first!r} and batch {batch!r} must be at least 1")
    if budget < first:
        raise ValueError(f"max_samples {budget!r} is below samples {first!r}")
    out = list(range(first, budget + 1, batch))
    if out[-1] != budget:
        out.append(budget)
    return out


@dataclass(frozen=True)
class SequentialOutcome:
    """Where a sequential check stopped: ``status`` is ``"pass"``, ``"fail"`` or
    ``"inconclusive"``; the interval is the one the decision rests on."""

    status: str
    n: int
    low: float
    high: float
    stop: StopReason


def _judge(low: float, high: float, threshold: float, higher_is_better: bool) -> str:
    clears, misses = (low >= threshold, high < threshold) if higher_is_better else (
        high <= threshold, low > threshold)
    return "pass" if clears else "fail" if misses else "inconclusive"


def sequential_decision(
    stream: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    first: int,
    batch: int,
    budget: int | None = None,
    fixed_interval: Callable[[np.ndarray], tuple[float, float]],
    higher_is_better: bool = True,
    confidence: float = 0.95,
    lower: float = 0.0,
    upper: float = 1.0,
    grid: int = DEFAULT_GRID,
    bounded: bool = True,
    interval_at: Callable[[np.ndarray, float], tuple[float, float]] | None = None,
) -> SequentialOutcome:
    """Judge *stream* (at least *first* samples; the budget is its length unless given)
    the way a sequential check does.

    The first look, at *first* samples, uses *fixed_interval* (the check's ordinary
    interval at *confidence*); if that is inconclusive, the later looks (every *batch*
    samples up to *budget*) use the betting confidence sequence at the same confidence
    over all samples so far (*bounded*, for samples within *lower*..*upper*: successes),
    or the asymptotic one (not *bounded*: continuous scores whose range is much wider than
    their spread). See the module's docstring for why the error stays within
    ``1 - confidence``.

    With *interval_at* (the check's own interval at a given confidence), the later looks
    use it instead, each at ``spending_confidence(confidence, looks)``: the second half of
    the error split evenly over them (Bonferroni). That rule needs no bounds and no fixed
    order of the samples, so it applies to any check kind's verdict as it stands.
    """
    arr = np.asarray(stream, dtype=np.float64).ravel()
    budget = arr.size if budget is None else budget
    if arr.size < budget:
        raise ValueError(f"a stream of {arr.size} samples is shorter than the budget {budget}")
    points = looks(first, batch, budget)
    low, high = fixed_interval(arr[:first])
    status = _judge(low, high, threshold, higher_is_better)
    if status != "inconclusive" or len(points) == 1:
        return SequentialOutcome(status, first, low, high, StopReason.FIRST_LOOK)
    if interval_at is not None:
        each = spending_confidence(confidence, len(points))
        for n in points[1:]:
            low, high = interval_at(arr[:n], each)
            status = _judge(low, high, threshold, higher_is_better)
            if status != "inconclusive":
                return SequentialOutcome(status, n, low, high, StopReason.DECIDED)
        return SequentialOutcome("inconclusive", budget, low, high, StopReason.BUDGET)
    if bounded:
        lows, highs = betting_cs_path(arr[:budget], alpha=1 - confidence, lower=lower, upper=upper,
                                      grid=grid)
    else:
        lows, highs = asymptotic_cs_path(arr[:budget], alpha=1 - confidence,
                                         tightest_at=max(first + batch, budget // 2),
                                         start=max(2, first))
    for n in points[1:]:
        low, high = float(lows[n - 1]), float(highs[n - 1])
        status = _judge(low, high, threshold, higher_is_better)
        if status != "inconclusive":
            return SequentialOutcome(status, n, low, high, StopReason.DECIDED)
    return SequentialOutcome("inconclusive", budget, low, high, StopReason.BUDGET)
