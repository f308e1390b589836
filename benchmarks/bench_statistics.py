"""Do the verdicts' error rates mean what they say? A Monte-Carlo simulation with known truth.

Synthetic streams stand in for a check's samples: successes (0/1, judged with the Wilson
interval) and continuous scores in -2..2 (a cosine margin, judged with the bootstrap),
with true means on the threshold, near it on either side and far from it; clustered
scores (6 topics of 4 samples, each topic with its own difficulty); families of 20
checks (multiplicity); and pairs of runs with and without a real drop (the regression
gate). Every rule the product ships is run on every stream, and the table reports, per
rule and truth, how often it passed, failed, or stayed inconclusive, how often it was
*wrong* (passed a truth below the threshold, failed one at or above it), and the mean
samples it drew.

Rules:
  fixed@24       today's design: the suite's ``samples`` (24), a 95% interval
  fixed@budget   the same interval at the sequential budget (240): what a fixed design
                 must draw to decide as many near-threshold checks as the sequential one
  sequential     what checks do (``pytest_scenelora.scoring.sequential``): the fixed
                 interval at 24; if inconclusive, the same interval every 24 samples up
                 to 240, each later look at 99.44% (the second 5% of error split over 9)
  sequential cs  the same looks judged by a confidence sequence instead (betting for
                 rates, asymptotic for scores): valid at every n, but wider at these
                 few looks, so not what checks use
  naive/cluster  clustered scores judged as if independent (bootstrap), or with the
                 cluster-robust t interval (``cluster_t_ci``) or the cluster bootstrap
  unseen grows   unseen_scenes' pooled rate over scenes with rates of their own, undecided
                 at 7 scenes of 8 samples: growing the scenes (5 more a look, what the
                 check does) or each scene's samples (8 more a look, not shipped)
  none/holm/bh   a family of 20 checks, all exactly on their thresholds: any decision is
                 counted as an error (the strict null); and 10 null + 10 far, for the FDR
  mcnemar/paired-bootstrap/non-inferiority   the regression gate on paired runs

``coverage`` per row is 1 minus its error rate; each shipped rule must keep it at or
above 95% (within Monte-Carlo error). The last line reads
``coverage=<worst shipped coverage> samples_ratio=<mean sequential samples / fixed@budget>``,
the ratio averaged over the truths off the threshold.

Run: python benchmarks/bench_statistics.py [--runs N] [--seed S]   (default 1000 runs per
row: a few minutes on one core; --runs 200 for a quick look)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_scenelora.scoring.multiplicity import adjust
from pytest_scenelora.scoring.paired import non_inferior, paired_rates
from pytest_scenelora.scoring.sequential import sequential_decision
from pytest_scenelora.scoring.statistics import (
    binomial_pvalue,
    bootstrap_ci,
    cluster_bootstrap_ci,
    cluster_t_ci,
    wilson_ci,
)

FIRST = 24
BATCH = 24
BUDGET = 240
CONFIDENCE = 0.95
RESAMPLES = 1000
RATE_THRESHOLD = 0.6
SCORE_THRESHOLD = 0.03
SCORE_BOUNDS = (-2.0, 2.0)


@dataclass
class Row:
    """One rule on one kind of truth, over many runs."""

    rule: str
    truth: str
    passed: float
    failed: float
    inconclusive: float
    wrong: float
    samples: float
    shipped: bool = True

    @property
    def coverage(self) -> float:
        return 1 - self.wrong


def _status(low: float, high: float, threshold: float) -> str:
    return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"


def _tally(rule: str, truth: str, statuses: list[str], wrong: list[bool], samples: list[int],
           shipped: bool = True) -> Row:
    n = len(statuses)
    return Row(rule, truth, statuses.count("pass") / n, statuses.count("fail") / n,
               statuses.count("inconclusive") / n, sum(wrong) / n, float(np.mean(samples)), shipped)


def _is_wrong(status: str, mean: float, threshold: float) -> bool:
    # pass claims mean >= threshold, fail claims mean < threshold
    return (status == "pass" and mean < threshold) or (status == "fail" and mean >= threshold)


def rate_stream(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def score_stream(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    # symmetric and bounded (mean exactly *mean*), spread like a cosine margin's (sd ~0.13)
    return mean + 0.6 * (rng.beta(2, 2, n) - 0.5)


def _wilson(x: np.ndarray) -> tuple[float, float]:
    return wilson_ci(int(x.sum()), x.size, confidence=CONFIDENCE)


def simulate_single(runs: int, seed: int, *, budget: int = BUDGET, grid: int = 500,
                    with_cs: bool = True) -> list[Row]:
    """fixed@24, fixed@budget and sequential (and the confidence sequences, unless not
    *with_cs*) on success and score streams."""
    rows: list[Row] = []
    kinds: list[tuple[str, float, list[tuple[str, float]], Callable, Callable, tuple[float, float]]] = [
        ("rate", RATE_THRESHOLD,
         [("on threshold", 0.6), ("near above", 0.7), ("near below", 0.5),
          ("far above", 0.85), ("far below", 0.35)],
         rate_stream, _wilson, (0.0, 1.0)),
        ("score", SCORE_THRESHOLD,
         [("on threshold", 0.03), ("near above", 0.07), ("near below", -0.01),
          ("far above", 0.2), ("far below", -0.15)],
         score_stream, None, SCORE_BOUNDS),
    ]
    for index, (kind, threshold, truths, draw, interval, (lower, upper)) in enumerate(kinds):
        for t_index, (label, mean) in enumerate(truths):
            rng = np.random.default_rng([seed, index, t_index])
            out: dict[str, tuple[list[str], list[bool], list[int]]] = {
                r: ([], [], []) for r in ("fixed@24", "fixed@budget", "sequential", "sequential cs")}
            for run in range(runs):
                stream = draw(rng, mean, budget)

                def fixed(x: np.ndarray, run: int = run,
                          interval: Callable | None = interval) -> tuple[float, float]:
                    if interval is not None:
                        return interval(x)
                    return bootstrap_ci(x, confidence=CONFIDENCE, resamples=RESAMPLES, seed=run)

                for rule, (low, high), n in (("fixed@24", fixed(stream[:FIRST]), FIRST),
                                             ("fixed@budget", fixed(stream), budget)):
                    status = _status(low, high, threshold)
                    out[rule][0].append(status)
                    out[rule][1].append(_is_wrong(status, mean, threshold))
                    out[rule][2].append(n)
                def at(x: np.ndarray, confidence: float, run: int = run,
                       interval: Callable | None = interval) -> tuple[float, float]:
                    if interval is not None:
                        return wilson_ci(int(x.sum()), x.size, confidence=confidence)
                    return bootstrap_ci(x, confidence=confidence, resamples=RESAMPLES, seed=run)

                rules = [("sequential", {"interval_at": at})]
                if with_cs:
                    rules.append(("sequential cs", {"bounded": interval is not None}))
                for rule, extra in rules:
                    seq = sequential_decision(stream, threshold, first=FIRST, batch=BATCH, budget=budget,
                                              fixed_interval=fixed, confidence=CONFIDENCE,
                                              lower=lower, upper=upper, grid=grid, **extra)
                    out[rule][0].append(seq.status)
                    out[rule][1].append(_is_wrong(seq.status, mean, threshold))
                    out[rule][2].append(seq.n)
            for rule, (statuses, wrong, samples) in out.items():
                if statuses:
                    rows.append(_tally(f"{rule} {kind}", label, statuses, wrong, samples,
                                       shipped=rule != "sequential cs"))
    return rows


def simulate_clustered(runs: int, seed: int, *, clusters: int = 6, per: int = 4) -> list[Row]:
    """Scores with a difficulty per topic: the naive bootstrap, the cluster bootstrap and
    the cluster-robust t interval, on and near the threshold."""
    rows: list[Row] = []
    labels = np.repeat(np.arange(clusters), per)
    for t_index, (label, mean) in enumerate((("on threshold", 0.03), ("near above", 0.13),
                                             ("near below", -0.07))):
        rng = np.random.default_rng([seed, 99, t_index])
        out: dict[str, tuple[list[str], list[bool], list[int]]] = {
            r: ([], [], []) for r in ("naive bootstrap", "cluster bootstrap", "cluster t")}
        for run in range(runs):
            effects = rng.normal(0, 0.1, clusters)
            x = (mean + effects[:, None] + 0.6 * (rng.beta(2, 2, (clusters, per)) - 0.5)).ravel()
            # the truth is the mean over topics at large, not these 6 topics' mean
            intervals = {
                "naive bootstrap": bootstrap_ci(x, confidence=CONFIDENCE, resamples=RESAMPLES, seed=run),
                "cluster bootstrap": cluster_bootstrap_ci(x, labels, confidence=CONFIDENCE,
                                                          resamples=RESAMPLES, seed=run),
                "cluster t": cluster_t_ci(x, labels, confidence=CONFIDENCE),
            }
            for rule, (low, high) in intervals.items():
                status = _status(low, high, SCORE_THRESHOLD)
                out[rule][0].append(status)
                out[rule][1].append(_is_wrong(status, mean, SCORE_THRESHOLD))
                out[rule][2].append(x.size)
        for rule, (statuses, wrong, samples) in out.items():
            rows.append(_tally(f"{rule} clustered", label, statuses, wrong, samples,
                               shipped=rule == "cluster t"))
    return rows


def simulate_grown_clusters(runs: int, seed: int, *, scenes: int = 7, per: int = 8, batch: int = 5,
                            factor: int = 4, threshold: float = 0.5, spread: float = 4.0) -> list[Row]:
    """unseen_scenes' sequential sampling: a pooled success rate over scenes, each scene with
    its own true rate (Beta with the truth's mean and concentration *spread*), judged the
    way the check judges it (``decide`` with the scenes as clusters: the wider of Wilson and
    the cluster-robust t; later looks ``rejudge``d at the spent confidence). An undecided
    first look (*scenes* of *per* samples, as the shipped suite: 2 listed + 5 drawn) grows
    either the samples of each scene (*per* more each look) or the scenes (*batch* more,
    as Hypothesis's ``examples``), up to *factor* times the first look's samples or scenes
    grown. The counterexample rule (one scene confidently below) is left out: this is the
    pooled rule alone."""
    from pytest_scenelora.scoring.sequential import looks, spending_confidence
    from pytest_scenelora.scoring.verdict import Status, decide, rejudge

    growths = {"samples per scene": looks(per, per, factor * per),
               "scenes": [scenes - batch + k for k in looks(batch, batch, factor * batch)]}
    rows: list[Row] = []
    truths = (("on threshold", threshold), ("near above", threshold + 0.12),
              ("near below", threshold - 0.12), ("far above", threshold + 0.3))
    for t_index, (label, mean) in enumerate(truths):
        for g_index, (rule, points) in enumerate(growths.items()):
            rng = np.random.default_rng([seed, 77, t_index, g_index])
            each = spending_confidence(CONFIDENCE, len(points))
            statuses, wrong, drawn = [], [], []
            for run in range(runs):
                most = points[-1] if rule == "scenes" else scenes
                rates = rng.beta(mean * spread, (1 - mean) * spread, most)
                longest = points[-1] if rule == "samples per scene" else per
                hits = rng.random((most, longest)) < rates[:, None]
                for look, point in enumerate(points):
                    k, m = (scenes, point) if rule == "samples per scene" else (point, per)
                    x = hits[:k, :m].astype(float).ravel()
                    verdict = decide("unseen_scenes", "sim", x, threshold, seed=run, rate=True,
                                     clusters=np.repeat(np.arange(k), m).tolist())
                    if look:
                        verdict = rejudge(verdict, confidence=each, seed=run)
                    if verdict.status is not Status.INCONCLUSIVE:
                        break
                statuses.append(verdict.status.value)
                wrong.append(_is_wrong(verdict.status.value, mean, threshold))
                drawn.append(x.size)
            rows.append(_tally(f"unseen grows {rule}", label, statuses, wrong, drawn,
                               shipped=rule == "scenes"))
    return rows


def simulate_multiplicity(runs: int, seed: int, *, family: int = 20) -> list[Row]:
    """A family of success-rate checks at 24 samples each. All on their thresholds: any
    decision counts as an error (family-wise error). Half on, half far above: the share
    of wrong decisions among those made (false discovery rate)."""
    rows: list[Row] = []
    rng = np.random.default_rng([seed, 7])
    for label, far in (("all on threshold", 0), ("10 on + 10 far", family // 2)):
        for method in ("none", "holm", "bh"):
            errors = []
            decided_share = []
            for _ in range(runs):
                rates = np.array([RATE_THRESHOLD] * (family - far) + [0.95] * far)
                succ = (rng.random((family, FIRST)) < rates[:, None]).sum(axis=1)
                p = np.array([binomial_pvalue(int(s), FIRST, RATE_THRESHOLD) for s in succ])
                decided = adjust(p, method) <= 1 - CONFIDENCE
                null_decided = int(decided[: family - far].sum())
                if far == 0:
                    errors.append(null_decided > 0)
                else:
                    errors.append(null_decided / max(1, int(decided.sum())))
                decided_share.append(float(decided.mean()))
            wrong = float(np.mean(errors))
            rows.append(Row(f"{method} ×{family}", label, float(np.mean(decided_share)), 0.0,
                            1 - float(np.mean(decided_share)), wrong, float(FIRST),
                            shipped=method != "none"))
    return rows


def simulate_paired(runs: int, seed: int, *, n: int = 48, tolerance: float = 0.05,
                    margin: float = 0.1) -> list[Row]:
    """Baseline and candidate runs paired sample by sample (the same prompt and seed, so
    correlated). The gate regresses on a drop larger than *tolerance* that is significant;
    non-inferiority passes when the drop's upper bound is below *margin*."""
    from pytest_scenelora.reporting.baseline import paired_bootstrap

    rows: list[Row] = []
    rng = np.random.default_rng([seed, 13])
    for label, drop in (("no drop", 0.0), ("drop 0.25", 0.25), ("drop = margin", margin)):
        mc, pb, ni = [], [], []
        for run in range(runs):
            u = rng.random(n)
            base = (u < 0.8).astype(float)
            cand = (u < 0.8 - drop).astype(float)
            noise = rng.random(n) < 0.1  # each run's own sampling noise, both ways
            cand[noise] = (rng.random(int(noise.sum())) < 0.8 - drop).astype(float)
            result = paired_rates(base, cand, confidence=CONFIDENCE)
            mc.append(result.drop > tolerance and result.p_value <= 1 - CONFIDENCE)
            ni.append(non_inferior(result.high, margin))
            s_base = 0.3 + 0.1 * rng.standard_normal(n)
            s_cand = s_base - drop / 2 + 0.05 * rng.standard_normal(n)
            delta, _low, high, _ = paired_bootstrap(s_base, s_cand, seed=run, confidence=CONFIDENCE,
                                                   resamples=RESAMPLES)
            pb.append(-delta > tolerance and high < 0)
        for rule, decisions, error_when in (("mcnemar gate", mc, drop == 0.0),
                                            ("paired-bootstrap gate", pb, drop == 0.0),
                                            ("non-inferiority", ni, drop >= margin)):
            rate = float(np.mean(decisions))
            verb = "regressed" if rule != "non-inferiority" else "shown no worse"
            rows.append(Row(f"{rule} n={n}", f"{label} ({verb})", rate, 0.0, 1 - rate,
                            rate if error_when else 0.0, float(n)))
    return rows


def simulate(runs: int, seed: int = 0, *, budget: int = BUDGET, grid: int = 500) -> list[Row]:
    return (simulate_single(runs, seed, budget=budget, grid=grid) + simulate_clustered(runs, seed)
            + simulate_grown_clusters(runs, seed) + simulate_multiplicity(runs, seed)
            + simulate_paired(runs, seed))


def worst_coverage(rows: list[Row]) -> float:
    return min(r.coverage for r in rows if r.shipped)


def samples_ratio(rows: list[Row]) -> float:
    """Mean samples of the sequential rule over those of fixed@budget, off the threshold."""
    seq = [r.samples for r in rows if r.rule in ("sequential rate", "sequential score")
           and r.truth != "on threshold"]
    fixed = [r.samples for r in rows if r.rule.startswith("fixed@budget") and r.truth != "on threshold"]
    return float(np.mean(seq) / np.mean(fixed))


def render(rows: list[Row], runs: int) -> str:
    se = math.sqrt(0.05 * 0.95 / runs)
    head = (f"{'rule':<32} {'truth':<30} {'pass':>6} {'fail':>6} {'incon':>6} {'wrong':>6} "
            f"{'cover':>6} {'samples':>8}")
    lines = [f"{runs} runs per row; Monte-Carlo standard error of a 5% rate: {se:.3f}", head,
             "-" * len(head)]
    for r in rows:
        flag = "" if r.shipped else "  (not shipped)"
        lines.append(f"{r.rule:<32} {r.truth:<30} {r.passed:>6.3f} {r.failed:>6.3f} "
                     f"{r.inconclusive:>6.3f} {r.wrong:>6.3f} {r.coverage:>6.3f} {r.samples:>8.1f}{flag}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = simulate(args.runs, args.seed)
    print(render(rows, args.runs))
    print(f"coverage={worst_coverage(rows):.3f} samples_ratio={samples_ratio(rows):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
