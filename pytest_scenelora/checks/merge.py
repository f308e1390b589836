"""``merge_equivalence``: a merged (or combined) adapter computes what its parts compute.

Merging LoRA factors into the base weights, or folding several adapters into one
weighted combination, is pure arithmetic: the logits must match the unmerged adapter's
up to floating-point rounding. A wrong scale (alpha/r applied twice or not at all), a
transposed factor or a missed module shows up as a logit difference far above rounding.
This check has no sampling noise, so it is decided on the worst probe, not an interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..verdict import CheckInputError, Status, Verdict, pick_worst

__all__ = ["max_logit_difference", "merge_equivalence"]


def max_logit_difference(unmerged_logits: np.ndarray, merged_logits: np.ndarray) -> np.ndarray:
    """Per probe, the largest absolute difference between the two logit arrays.

    Arrays are ``(probes, ...)`` (vocab, or positions × vocab); everything after the
    first axis is reduced. A NaN anywhere in a probe makes its difference NaN.
    """
    a = np.asarray(unmerged_logits, dtype=np.float64)
    b = np.asarray(merged_logits, dtype=np.float64)
    if a.shape != b.shape:
        raise CheckInputError(f"unmerged and merged logits differ in shape: {a.shape} and {b.shape}")
    if a.ndim == 1:
        a, b = a[None], b[None]
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b).reshape(len(a), -1)
    bad = ~np.isfinite(diff).all(axis=1)
    out = diff.max(axis=1) if diff.shape[1] else np.zeros(len(a))
    out[bad] = math.nan
    return out


def merge_equivalence(
    unmerged_logits: np.ndarray,
    merged_logits: np.ndarray,
    *,
    tolerance: float,
    subject: str,
    prompts: Sequence[str] | None = None,
) -> Verdict:
    """Pass when every probe's max |logit difference| is at most *tolerance* (lower is better).

    The score is the maximum over probes (no interval: the computation is deterministic,
    so one bad probe is a real defect, not noise). A deliberately rescaled merge fails.
    """
    diffs = max_logit_difference(unmerged_logits, merged_logits)
    if diffs.size == 0:
        raise CheckInputError(f"merge_equivalence[{subject}]: no probes to compare")
    finite = bool(np.isfinite(diffs).all())
    worst_diff = float(diffs.max()) if finite else math.nan
    status = Status.PASS if finite and worst_diff <= tolerance else Status.FAIL
    scale = np.abs(np.asarray(unmerged_logits, dtype=np.float64))
    detail = {
        "statistic": "max",
        "probes_over_tolerance": int((~(diffs <= tolerance)).sum()),
        "max_abs_logit": float(np.nanmax(scale)) if np.isfinite(scale).any() else None,
    }
    if not finite:
        detail["reason"] = "some logits are not finite numbers (NaN or inf)"
    contexts = None if prompts is None else [{"probe": p} for p in prompts]
    worst = pick_worst(diffs, higher_is_better=False, contexts=contexts)
    return Verdict(
        check="merge_equivalence",
        subject=subject,
        score=worst_diff,
        ci_low=worst_diff,
        ci_high=worst_diff,
        threshold=float(tolerance),
        higher_is_better=False,
        status=status,
        samples=tuple(float(d) for d in diffs),
        n=int(diffs.size),
        worst=worst,
        detail=detail,
    )
