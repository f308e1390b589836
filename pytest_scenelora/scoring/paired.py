"""Paired comparisons of two runs of the same check: exact tests for success rates, and
the non-inferiority decision.

Sample *i* of a baseline and sample *i* of a candidate answer the same prompt with the
same seed, so the pairs, not the two rates, carry the evidence. For 0/1 successes only the
*discordant* pairs say anything about a change: ``b`` pairs the baseline got right and
the candidate wrong, ``c`` the other way round. Under "no change" ``b`` out of ``b + c``
is a fair coin's count, which makes McNemar's test exact at any sample size (a bootstrap
of the paired differences is not, at the small counts where it matters).

Pure functions of numbers (numpy and the standard library only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .statistics import binomial_cdf

__all__ = [
    "PairedRates",
    "clopper_pearson",
    "mcnemar_exact",
    "non_inferior",
    "paired_rates",
]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for *b* and *c* discordant pairs: twice the smaller
    binomial tail of ``b`` out of ``b + c`` at one half, capped at 1 (no discordant pair:
    1, nothing changed)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts {b!r}, {c!r} must not be negative")
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * binomial_cdf(min(b, c), n, 0.5))


def _beta_ppf(q: float, k: int, n: int) -> float:
    """Quantile of Beta(k, n - k + 1) by bisection on the binomial identity (no scipy
    needed): P(Beta(k, n-k+1) <= p) = P(Binomial(n, p) >= k)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 1 - binomial_cdf(k - 1, n, mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate: never below its level."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} is impossible")
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else _beta_ppf(tail, successes, n)
    high = 1.0 if successes == n else _beta_ppf(1 - tail, successes + 1, n)
    return (low, high)


@dataclass(frozen=True)
class PairedRates:
    """Two runs' 0/1 samples compared pair by pair.

    ``drop`` is the baseline's rate minus the candidate's (positive: worse); ``low`` and
    ``high`` bound it exactly (conservatively) at the stated confidence; ``p_value`` is
    McNemar's exact two-sided p-value of "no change".
    """

    n: int
    b: int  # baseline right, candidate wrong
    c: int  # baseline wrong, candidate right
    drop: float
    low: float
    high: float
    p_value: float


def paired_rates(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
) -> PairedRates:
    """McNemar's exact test and an exact interval on the paired drop in success rate.

    The drop is ``psi * (2 * pi - 1)``, where ``psi`` is the share of discordant pairs and
    ``pi`` the share of those the candidate lost. Conditional on the number of discordant
    pairs, ``b`` is binomial in ``pi``, so a Clopper-Pearson interval bounds ``pi``
    exactly; another bounds ``psi``. Each at half the error (Bonferroni), the range of
    ``psi * (2 * pi - 1)`` over both is an interval of the drop whose coverage is at
    least *confidence* at every sample size. Whether the drop is *significant* is
    McNemar's test (the interval of ``pi`` alone excludes one half); the joint interval
    is what a tolerance is judged against.
    """
    a = np.asarray(baseline, dtype=np.float64).ravel()
    z = np.asarray(candidate, dtype=np.float64).ravel()
    if a.size != z.size:
        raise ValueError(f"paired samples need equal counts, not {a.size} and {z.size}")
    if a.size == 0:
        raise ValueError("a comparison needs samples on both sides")
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(z, (0.0, 1.0)).all()):
        raise ValueError("paired success rates need samples of 0 or 1")
    n = int(a.size)
    b = int(((a == 1) & (z == 0)).sum())
    c = int(((a == 0) & (z == 1)).sum())
    d = b + c
    drop = (b - c) / n
    half = 1 - (1 - confidence) / 2
    psi_low, psi_high = clopper_pearson(d, n, confidence=half)
    if d == 0:
        pi_low, pi_high = 0.0, 1.0
    else:
        pi_low, pi_high = clopper_pearson(b, d, confidence=half)
    # psi * (2 pi - 1) is monotone in each: its extremes sit at the corners of the box
    corners = [psi * (2 * pi - 1) for psi in (psi_low, psi_high) for pi in (pi_low, pi_high)]
    low, high = min(corners), max(corners)
    return PairedRates(n=n, b=b, c=c, drop=drop, low=min(low, drop), high=max(high, drop),
                       p_value=mcnemar_exact(b, c))


def non_inferior(drop_high: float, margin: float) -> bool:
    """The non-inferiority decision: the candidate is no worse than the baseline by more
    than *margin* when the upper confidence bound of its drop is below *margin*.

    The burden of proof is on the candidate (the framing regulators use for a generic
    drug): too few samples to bound the drop means *not shown*, where the ordinary gate
    ("a significant drop larger than the tolerance") would let a noisy candidate through.
    """
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"non-inferiority margin {margin!r} must be a finite number >= 0")
    return math.isfinite(drop_high) and drop_high < margin
