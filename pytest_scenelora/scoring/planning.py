"""How many samples a decision needs: the planning behind ``scenelora plan``.

For a check's threshold and the rate (or mean score) an adapter is expected to reach,
two answers: the fixed design's sample count (the textbook formula for a one-sample test
at the verdict's confidence and a chosen power, the one the Wilson interval and the
bootstrap approximate), and what sequential sampling spends on average under the same
truth, estimated by simulating the rule a check applies
(:func:`~.sequential.sequential_decision`) with a fixed seed, so the same question
always gets the same answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .sequential import sequential_decision
from .statistics import bootstrap_ci, wilson_ci

__all__ = ["Plan", "fixed_samples", "plan"]

#: No plan asks for more samples than this.
PLAN_CAP = 100_000


def fixed_samples(expected: float, threshold: float, *, sd: float | None = None,
                  confidence: float = 0.95, power: float = 0.8) -> int | None:
    """Samples a fixed-n verdict needs to decide *expected* against *threshold* with
    probability *power*; None when the two are equal (no sample count decides it).

    Success rates (``sd`` None) use the score test's formula, whose inversion is the
    Wilson interval: ``n = ((z_a sqrt(t(1-t)) + z_b sqrt(p(1-p))) / (p - t))^2``; scores
    with spread *sd* use ``n = ((z_a + z_b) sd / (mean - t))^2``.
    """
    if not 0 < confidence < 1 or not 0 < power < 1:
        raise ValueError(f"confidence {confidence!r} and power {power!r} must lie between 0 and 1")
    gap = abs(expected - threshold)
    if gap == 0:
        return None
    z_a = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    z_b = NormalDist().inv_cdf(power)
    if sd is None:
        if not (0 <= expected <= 1 and 0 < threshold < 1):
            raise ValueError(f"a success rate and its threshold lie between 0 and 1, not {expected!r} "
                             f"and {threshold!r}")
        spread = z_a * math.sqrt(threshold * (1 - threshold)) + z_b * math.sqrt(expected * (1 - expected))
    else:
        if not sd > 0:
            raise ValueError(f"the spread of a score (sd) must be above 0, not {sd!r}")
        spread = (z_a + z_b) * sd
    return int(min(PLAN_CAP, max(2, math.ceil((spread / gap) ** 2))))


@dataclass(frozen=True)
class Plan:
    """A fixed design's and sequential sampling's sample counts for one question."""

    expected: float
    threshold: float
    sd: float | None
    confidence: float
    power: float
    fixed: int | None  # samples for a fixed-n verdict at *power*
    first: int  # the suite's samples
    batch: int
    budget: int  # max_samples
    sequential_mean: float  # samples sequential sampling draws on average
    sequential_decided: float  # share decided within the budget
    first_decided: float  # share decided at the first look alone

    def lines(self) -> list[str]:
        what = (f"a success rate of {self.expected:g}" if self.sd is None
                else f"a mean score of {self.expected:g} (sd {self.sd:g})")
        pct = f"{self.confidence * 100:g}%"
        out = [f"scenelora plan: {what} against the threshold {self.threshold:g} ({pct} verdicts)"]
        if self.fixed is None:
            out.append("  fixed design: the expected value sits on the threshold; no sample count decides it")
        else:
            out.append(f"  fixed design: {self.fixed} samples decide it {self.power * 100:g}% of the time")
        out.append(f"  samples: {self.first}: decided {self.first_decided * 100:.0f}% of the time")
        out.append(f"  sequential (samples: {self.first}, batches of {self.batch}, "
                   f"max_samples: {self.budget}): {self.sequential_mean:.0f} samples on average, "
                   f"decided within the budget {self.sequential_decided * 100:.0f}% of the time")
        return out


def plan(expected: float, threshold: float, *, sd: float | None = None, confidence: float = 0.95,
         power: float = 0.8, first: int = 24, batch: int = 24, budget: int = 240, runs: int = 400,
         seed: int = 0) -> Plan:
    """The fixed design's sample count and a simulation of sequential sampling under the
    expected truth (Bernoulli successes, or normal scores with spread *sd*)."""
    fixed = fixed_samples(expected, threshold, sd=sd, confidence=confidence, power=power)
    if budget < first:
        raise ValueError(f"max_samples {budget!r} is below samples {first!r}")
    rng = np.random.default_rng(seed)
    used, decided, first_decided = [], 0, 0
    for run in range(runs):
        if sd is None:
            stream = (rng.random(budget) < expected).astype(float)

            def interval(x: np.ndarray, level: float) -> tuple[float, float]:
                return wilson_ci(int(x.sum()), x.size, confidence=level)
        else:
            stream = rng.normal(expected, sd, budget)

            def interval(x: np.ndarray, level: float, run: int = run) -> tuple[float, float]:
                return bootstrap_ci(x, confidence=level, resamples=500, seed=run)
        outcome = sequential_decision(stream, threshold, first=first, batch=batch, budget=budget,
                                      fixed_interval=lambda x, f=interval: f(x, confidence),
                                      confidence=confidence, interval_at=interval)
        used.append(outcome.n)
        decided += outcome.status != "inconclusive"
        first_decided += outcome.status != "inconclusive" and outcome.n == first
    return Plan(expected=expected, threshold=threshold, sd=sd, confidence=confidence, power=power,
                fixed=fixed, first=first, batch=batch, budget=budget,
                sequential_mean=float(np.mean(used)), sequential_decided=decided / runs,
                first_decided=first_decided / runs)
