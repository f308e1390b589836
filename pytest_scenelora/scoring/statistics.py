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


def bootstrap_pvalue(
    values: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    resamples: int = 2000,
    seed: int,
) -> float:
    """Two-sided percentile-bootstrap p-value of "the mean equals *threshold*".

    The p-value that matches :func:`bootstrap_ci` with the same seed: the interval at
    confidence ``c`` excludes *threshold* exactly when this is at most ``1 - c`` (up to
    the quantile interpolation), so a multiplicity adjustment of these p-values acts on
    the same decisions the intervals made. Degenerate samples answer like the interval:
    one value gives 1, identical values give 0 unless they equal the threshold.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("a p-value needs at least one value")
    if not np.all(np.isfinite(arr)) or arr.size == 1:
        return 1.0
    if np.all(arr == arr[0]):
        return 1.0 if arr[0] == threshold else 0.0
    means = _bootstrap_means(arr, resamples, seed)
    below = float(np.mean(means <= threshold))
    above = float(np.mean(means >= threshold))
    return min(1.0, 2 * min(below, above))


def _bootstrap_means(arr: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = arr.size
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 8_000_000 // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = arr[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def wilson_pvalue(successes: int, n: int, threshold: float) -> float:
    """Two-sided score-test p-value of "the success rate equals *threshold*".

    The Wilson interval is the set of rates this test does not reject, so the interval at
    confidence ``c`` excludes *threshold* exactly when this p-value is below ``1 - c``.
    """
    if n <= 0:
        raise ValueError("a success rate needs at least one sample")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} samples is impossible")
    from statistics import NormalDist

    if threshold <= 0 or threshold >= 1:  # a rate cannot lie beyond 0 or 1; at 0 or 1, only all-agree
        edge = successes == 0 if threshold <= 0 else successes == n
        return 1.0 if edge and 0 <= threshold <= 1 else 0.0
    z = (successes / n - threshold) / math.sqrt(threshold * (1 - threshold) / n)
    return min(1.0, 2 * (1 - NormalDist().cdf(abs(z))))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact to rounding)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def binomial_pvalue(successes: int, n: int, threshold: float) -> float:
    """Exact two-sided binomial p-value of "the success rate equals *threshold*": twice
    the smaller tail, capped at 1.

    What a run's multiplicity adjustment uses for success rates: Holm and
    Benjamini-Hochberg look far into the tails (p <= 0.05 / 20 for 20 checks), where the
    normal approximation behind the Wilson interval is too liberal at suite sample counts
    (``benchmarks/bench_statistics.py``: 6.3% family-wise error instead of 5% with it).
    """
    if n <= 0:
        raise ValueError("a success rate needs at least one sample")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} samples is impossible")
    if not 0 <= threshold <= 1:
        return 0.0
    lower = binomial_cdf(successes, n, threshold)
    upper = 1 - binomial_cdf(successes - 1, n, threshold)
    return min(1.0, 2 * min(lower, upper))


def cluster_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of the pooled mean of *values* from a two-stage cluster bootstrap.

    Samples that share a cluster (one scene, one topic, one prompt) share its difficulty,
    so they are not independent; an interval that treats them as independent is too
    narrow. Each resample draws the clusters with replacement, then the samples of every
    drawn cluster with replacement, and takes the mean of all drawn samples. Resampling
    the second stage as well widens the interval a little beyond the first stage alone,
    which offsets the percentile bootstrap's undercoverage when clusters are few.

    One cluster says nothing about the spread between clusters: its interval is
    unbounded, as :func:`bootstrap_ci`'s is for one value.
    """
    checked = _checked_clusters(values, clusters, confidence)
    if checked is None:
        return (math.nan, math.nan)
    arr, groups = checked
    if len(groups) < 2:
        return (-math.inf, math.inf)
    if np.all(arr == arr[0]):
        return (float(arr[0]), float(arr[0]))
    means = _cluster_bootstrap_means(groups, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def cluster_bootstrap_pvalue(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object],
    threshold: float,
    *,
    resamples: int = 2000,
    seed: int,
) -> float:
    """Two-sided p-value of "the pooled mean equals *threshold*" that matches
    :func:`cluster_bootstrap_ci` with the same seed (see :func:`bootstrap_pvalue`)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if len(clusters) != arr.size:
        raise ValueError(f"{len(clusters)} cluster labels for {arr.size} values")
    groups = _cluster_groups(arr, clusters)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or len(groups) < 2:
        return 1.0
    if np.all(arr == arr[0]):
        return 1.0 if arr[0] == threshold else 0.0
    means = _cluster_bootstrap_means(groups, resamples, seed)
    return min(1.0, 2 * min(float(np.mean(means <= threshold)), float(np.mean(means >= threshold))))


def _cluster_bootstrap_means(groups: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = len(groups)
    sizes = np.array([grp.size for grp in groups])
    width = int(sizes.max())
    # a (g, width) table padded with zeros, so one fancy index draws every second stage
    table = np.zeros((g, width))
    for i, grp in enumerate(groups):
        table[i, : grp.size] = grp
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 4_000_000 // max(1, g * width))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        k = stop - start
        picked = rng.integers(0, g, size=(k, g))  # first stage: clusters
        picked_sizes = sizes[picked]
        # second stage: within each drawn cluster, its samples with replacement
        inner = (rng.random((k, g, width)) * picked_sizes[..., None]).astype(np.int64)
        drawn = table[picked[..., None], inner]
        mask = np.arange(width)[None, None, :] < picked_sizes[..., None]
        means[start:stop] = (drawn * mask).sum(axis=(1, 2)) / picked_sizes.sum(axis=1)
    return means

def _checked_clusters(values: Sequence[float] | np.ndarray, clusters: Sequence[object],
                      confidence: float) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """*values* as an array, and split by their *clusters* label (refused when empty,
    mislabelled or at a confidence outside 0..1); None when a value is not finite (no
    interval is computed)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("a confidence interval needs at least one value")
    if len(clusters) != arr.size:
        raise ValueError(f"{len(clusters)} cluster labels for {arr.size} values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence!r} is not between 0 and 1")
    if not np.all(np.isfinite(arr)):
        return None
    return arr, _cluster_groups(arr, clusters)



def _cluster_groups(arr: np.ndarray, clusters: Sequence[object]) -> list[np.ndarray]:
    order: dict[object, list[int]] = {}
    for i, label in enumerate(clusters):
        order.setdefault(label, []).append(i)
    return [arr[idx] for idx in order.values()]


def cluster_count(clusters: Sequence[object]) -> int:
    """How many distinct clusters the labels name."""
    return len(set(clusters))


def student_t_cdf(x: float, df: int) -> float:
    """CDF of Student's t with *df* degrees of freedom (numpy and stdlib only): the density
    integrated by Simpson's rule after ``x = tan(theta)``, which keeps even the heavy tail
    of one degree of freedom on a finite range; accurate to about 1e-9."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df!r} must be at least 1")
    if x < 0:
        return 1 - student_t_cdf(-x, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    theta = np.linspace(0.0, math.atan(x), 2001)
    u = np.tan(theta)
    f = np.exp(log_norm - (df + 1) / 2 * np.log1p(u * u / df)) / np.cos(theta) ** 2
    h = theta[1] - theta[0]
    return float(min(1.0, 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())))


def student_t_ppf(q: float, df: int) -> float:
    """Quantile of Student's t with *df* degrees of freedom, by bisection on
    :func:`student_t_cdf`."""
    if not 0 < q < 1:
        raise ValueError(f"quantile {q!r} is not between 0 and 1")
    if df < 1:
        raise ValueError(f"degrees of freedom {df!r} must be at least 1")
    if q < 0.5:
        return -student_t_ppf(1 - q, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def cluster_t_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object],
    *,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Cluster-robust interval of the pooled mean: its standard error from the spread of
    the cluster totals (the CR1 sandwich), and Student's t with one degree of freedom
    fewer than there are clusters.

    The interval rests on the number of *clusters*, not samples: 24 samples of 3 topics
    are 3 observations of what a topic does, and the t quantile with 2 degrees of freedom
    (4.3 instead of 1.96) says so. With equally sized clusters it is exactly the t interval
    of the cluster means, which holds its level for normal cluster effects however few
    the clusters are; a percentile cluster bootstrap does not (it covers about 89% with 6
    clusters; ``benchmarks/bench_statistics.py`` measures both).
    """
    checked = _checked_clusters(values, clusters, confidence)
    if checked is None:
        return (math.nan, math.nan)
    arr, groups = checked
    g = len(groups)
    if g < 2:
        return (-math.inf, math.inf)
    mean = float(arr.mean())
    residual_totals = np.array([grp.sum() - grp.size * mean for grp in groups])
    se = math.sqrt(g / (g - 1) * float((residual_totals ** 2).sum())) / arr.size
    half = student_t_ppf(1 - (1 - confidence) / 2, g - 1) * se
    return (mean - half, mean + half)


def cluster_t_pvalue(values: Sequence[float] | np.ndarray, clusters: Sequence[object],
                     threshold: float) -> float:
    """Two-sided p-value of "the pooled mean equals *threshold*" that matches
    :func:`cluster_t_ci` (the interval excludes the threshold exactly when this is below
    ``1 - confidence``)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    groups = _cluster_groups(arr, clusters)
    g = len(groups)
    if arr.size == 0 or g < 2 or not np.all(np.isfinite(arr)):
        return 1.0
    mean = float(arr.mean())
    residual_totals = np.array([grp.sum() - grp.size * mean for grp in groups])
    se = math.sqrt(g / (g - 1) * float((residual_totals ** 2).sum())) / arr.size
    if se == 0:
        return 1.0 if mean == threshold else 0.0
    t = abs(mean - threshold) / se
    return min(1.0, 2 * (1 - student_t_cdf(t, g - 1)))
