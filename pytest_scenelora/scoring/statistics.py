"""The statistics of a sample: confidence intervals of a mean score and of a success rate.

Pure functions of numbers (numpy and the standard library only): the same values and seed
give the same interval on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of *values*, reproducible by *seed*.

    Resampling uses ``numpy.random.default_rng(seed)``, so the same values and seed give
    the same interval on every machine. Degenerate inputs are answered without
    resampling: one value says nothing about spread, so its interval is unbounded
    (``(-inf, inf)``: no verdict can rest on it); identical values give a zero-width
    interval at that value.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("a confidence interval needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence!r} is not between 0 and 1")
    if resamples < 1:
        raise ValueError(f"resamples {resamples!r} must be at least 1")
    if not np.all(np.isfinite(arr)):
        return (math.nan, math.nan)
    if arr.size == 1:
        return (-math.inf, math.inf)
    if np.all(arr == arr[0]):
        return (float(arr[0]), float(arr[0]))
    rng = np.random.default_rng(seed)
    n = arr.size
    means = np.empty(resamples, dtype=np.float64)
    # draw in chunks so a large sample never allocates more than ~8M indices at once
    chunk = max(1, 8_000_000 // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def wilson_ci(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a success rate.

    Used for pass/fail samples instead of the bootstrap, whose interval collapses to a
    point when every sample agrees (5 successes out of 5 would "prove" a 100% rate).
    """
    if n <= 0:
        raise ValueError("a success rate needs at least one sample")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} samples is impossible")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # p = 0 and p = 1 are exact endpoints; don't let rounding move them
    low = 0.0 if successes == 0 else max(0.0, mid - half)
    high = 1.0 if successes == n else min(1.0, mid + half)
    return (low, high)
