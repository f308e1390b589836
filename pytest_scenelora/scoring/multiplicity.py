"""Many decisions at once: Holm's and Benjamini-Hochberg's adjusted p-values.

A session of 16 adapters and 6 checks makes 96 decisions; at 95% each, about five of
them are wrong by chance when nothing is wrong at all. ``holm`` keeps the chance of *any*
wrong decision in the family within the level (family-wise error); ``bh`` keeps the
expected *share* of wrong ones among those decided within it (false discovery rate),
which costs less power when many checks are run to screen adapters.

Pure functions of numbers: adjusted p-values in the input's order, each at least its raw
p-value and at most 1, so "decided after adjustment" is ``adjusted <= 1 - confidence``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Multiplicity", "adjust", "benjamini_hochberg", "decided_after", "holm"]


class Multiplicity(str, enum.Enum):
    """How a run's decisions are adjusted for their number (``--scenelora-multiplicity``)."""

    NONE = "none"  # each verdict at its own level, as a pytest test stands on its own
    HOLM = "holm"  # family-wise error: no wrong decision in the run, at the level
    BH = "bh"  # false discovery rate: the share of wrong decisions, at the level


def _pvalues(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("p-values must be numbers from 0 to 1")
    return p


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the *i*-th smallest is multiplied by
    ``m - i`` (0-based) and made non-decreasing in that order.

    Rejecting where the adjusted value is at most ``alpha`` controls the family-wise
    error at ``alpha`` under any dependence between the tests, and is never less
    powerful than Bonferroni.
    """
    p = _pvalues(pvalues)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values: the *i*-th smallest (1-based) is
    multiplied by ``m / i`` and made non-decreasing from the largest down.

    Rejecting where the adjusted value is at most ``alpha`` keeps the false discovery
    rate within ``alpha`` for independent or positively dependent tests.
    """
    p = _pvalues(pvalues)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return adjusted


def adjust(pvalues: Sequence[float] | np.ndarray, method: Multiplicity | str) -> np.ndarray:
    """*pvalues* adjusted by *method* (``none`` returns them unchanged)."""
    method = Multiplicity(method)
    if method is Multiplicity.HOLM:
        return holm(pvalues)
    if method is Multiplicity.BH:
        return benjamini_hochberg(pvalues)
    return _pvalues(pvalues).copy()


def decided_after(pvalue: float | None, adjusted: float | None, confidence: float) -> bool:
    """Whether a decision made at *pvalue* still stands after adjustment to *adjusted*.

    An adjustment that left the p-value as it was (a family of one) leaves the decision
    as it was too, even where a bootstrap p-value and its percentile interval disagree by
    the interpolation between quantiles.
    """
    if pvalue is None or adjusted is None or not math.isfinite(adjusted) or adjusted <= pvalue:
        return True
    return adjusted <= 1 - confidence + 1e-12
