"""The pure statistics behind verdicts: confidence sequences, clustered intervals,
multiplicity adjustments and exact paired tests.

Checked against values published elsewhere (R's ``binom.test``, ``p.adjust``,
``qt``) and against their defining guarantees on synthetic data with a known truth, with
run counts small enough for the whole file to take seconds.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from pytest_scenelora.scoring.multiplicity import Multiplicity, adjust, benjamini_hochberg, holm
from pytest_scenelora.scoring.paired import (
    clopper_pearson,
    mcnemar_exact,
    non_inferior,
    paired_rates,
)
from pytest_scenelora.scoring.sequential import (
    StopReason,
    betting_cs,
    betting_cs_path,
    looks,
    sequential_decision,
)
from pytest_scenelora.scoring.statistics import (
    binomial_pvalue,
    bootstrap_ci,
    bootstrap_pvalue,
    cluster_bootstrap_ci,
    cluster_bootstrap_pvalue,
    cluster_t_ci,
    cluster_t_pvalue,
    student_t_ppf,
    wilson_ci,
    wilson_pvalue,
)

# ------------------------------------------------------------------ confidence sequence


def test_confidence_sequence_holds_the_mean_at_every_sample_count() -> None:
    """Over 200 streams of 300 samples, the true mean leaves the sequence at *any* of the
    300 looks in at most 5% of streams (Monte-Carlo slack: 3 standard errors)."""
    rng = np.random.default_rng(7)
    misses = 0
    runs = 200
    for _ in range(runs):
        x = rng.beta(2, 5, size=300)  # mean 2/7, skewed
        lows, highs = betting_cs_path(x, alpha=0.05, grid=400)
        misses += bool(np.any((lows > 2 / 7) | (highs < 2 / 7)))
    assert misses / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


def test_confidence_sequence_narrows_and_is_nested() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.7).astype(float)
    lows, highs = betting_cs_path(x)
    assert np.all(np.diff(lows) >= 0) and np.all(np.diff(highs) <= 0)
    assert highs[23] - lows[23] > highs[-1] - lows[-1]
    assert lows[-1] <= 0.7 <= highs[-1]
    # wider than the fixed-n interval at the same n: the price of looking at every n
    wl, wh = wilson_ci(int(x.sum()), 400)
    assert highs[-1] - lows[-1] > wh - wl
    assert highs[-1] - lows[-1] < 3 * (wh - wl)


def test_confidence_sequence_on_other_bounds_is_the_rescaled_one() -> None:
    rng = np.random.default_rng(2)
    x = rng.random(100)
    low, high = betting_cs(x)
    low2, high2 = betting_cs(4 * x - 2, lower=-2, upper=2)
    assert low2 == pytest.approx(4 * low - 2) and high2 == pytest.approx(4 * high - 2)


def test_confidence_sequence_is_deterministic_and_whole_range_when_empty() -> None:
    x = np.linspace(0, 1, 50)
    assert betting_cs(x) == betting_cs(x.copy())
    assert betting_cs([]) == (0.0, 1.0)


@pytest.mark.parametrize(("values", "kwargs", "message"), [
    ([0.5, 1.5], {}, "outside the bounds"),
    ([0.5, math.nan], {}, "finite"),
    ([0.5], {"alpha": 1.0}, "alpha"),
    ([0.5], {"lower": 1.0, "upper": 0.0}, "range"),
])
def test_confidence_sequence_refuses_bad_input(values, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        betting_cs(values, **kwargs)


def test_looks_schedule() -> None:
    assert looks(24, 24, 100) == [24, 48, 72, 96, 100]
    assert looks(24, 24, 24) == [24]
    with pytest.raises(ValueError, match="below samples"):
        looks(24, 8, 10)


def _wilson(x: np.ndarray) -> tuple[float, float]:
    return wilson_ci(int(x.sum()), x.size)


def test_sequential_decision_keeps_a_decided_first_look() -> None:
    stream = np.ones(200)
    out = sequential_decision(stream, 0.5, first=24, batch=24, fixed_interval=_wilson)
    assert (out.status, out.n, out.stop) == ("pass", 24, StopReason.FIRST_LOOK)


def test_sequential_decision_continues_until_decided() -> None:
    rng = np.random.default_rng(3)
    stream = (rng.random(400) < 0.8).astype(float)
    stream[:24] = np.r_[np.ones(16), np.zeros(8)]  # 67% at the first look: inconclusive vs 0.6
    out = sequential_decision(stream, 0.6, first=24, batch=24, fixed_interval=_wilson)
    assert out.status == "pass" and out.stop is StopReason.DECIDED and 24 < out.n <= 400
    assert out.low >= 0.6


def test_sequential_decision_stops_at_the_budget_on_the_threshold() -> None:
    stream = np.tile([1.0, 0.0], 50)  # exactly 50%, judged against 0.5
    out = sequential_decision(stream, 0.5, first=24, batch=24, fixed_interval=_wilson)
    assert (out.status, out.n, out.stop) == ("inconclusive", 100, StopReason.BUDGET)


def test_sequential_decision_lower_is_better_fails_high_scores() -> None:
    stream = np.full(100, 0.9)
    stream[::2] = 0.7
    out = sequential_decision(stream, 0.3, first=10, batch=10, higher_is_better=False,
                              fixed_interval=lambda x: bootstrap_ci(x, seed=0))
    assert out.status == "fail" and out.n == 10


# ------------------------------------------------------------------ clustered intervals


def _clustered(rng: np.random.Generator, clusters: int, per: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    effects = rng.normal(0, spread, clusters)
    x = (effects[:, None] + rng.normal(0, 0.1, (clusters, per))).ravel()
    return x, np.repeat(np.arange(clusters), per)


def test_cluster_t_interval_covers_with_few_clusters_where_the_naive_one_does_not() -> None:
    rng = np.random.default_rng(11)
    runs = 250
    clustered = naive = 0
    for seed in range(runs):
        x, labels = _clustered(rng, 6, 4, 0.1)
        low, high = cluster_t_ci(x, labels)
        clustered += low <= 0 <= high
        nl, nh = bootstrap_ci(x, seed=seed, resamples=300)
        naive += nl <= 0 <= nh
    assert clustered / runs >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / runs)
    assert naive / runs < 0.85  # independent resampling of clustered data is far too narrow


def test_cluster_t_interval_equals_the_t_interval_of_cluster_means() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    labels = ["a", "a", "b", "b", "c", "c"]
    means = np.array([1.5, 3.5, 5.5])
    half = 4.302652729749 * means.std(ddof=1) / math.sqrt(3)  # R: qt(0.975, 2)
    assert cluster_t_ci(x, labels) == pytest.approx((3.5 - half, 3.5 + half))
    low, _ = cluster_t_ci(x, labels, confidence=1 - cluster_t_pvalue(x, labels, 1.0))
    assert low == pytest.approx(1.0, abs=1e-6)


def test_one_cluster_has_no_interval() -> None:
    assert cluster_t_ci([0.1, 0.2, 0.3], [0, 0, 0]) == (-math.inf, math.inf)
    assert cluster_bootstrap_ci([0.1, 0.2, 0.3], [0, 0, 0], seed=0) == (-math.inf, math.inf)


def test_cluster_bootstrap_is_wider_than_the_naive_bootstrap_and_reproducible() -> None:
    rng = np.random.default_rng(5)
    x, labels = _clustered(rng, 8, 5, 0.2)
    low, high = cluster_bootstrap_ci(x, labels, seed=3)
    nl, nh = bootstrap_ci(x, seed=3)
    assert high - low > 1.5 * (nh - nl)
    assert cluster_bootstrap_ci(x, labels, seed=3) == (low, high)
    p = cluster_bootstrap_pvalue(x, labels, low, seed=3)
    assert p == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize(("q", "df", "expected"), [
    (0.975, 1, 12.7062047), (0.975, 2, 4.3026527), (0.975, 5, 2.5705818),
    (0.95, 10, 1.8124611), (0.975, 200, 1.9718962), (0.025, 3, -3.1824463),
])
def test_student_t_quantiles_match_r(q: float, df: int, expected: float) -> None:
    assert student_t_ppf(q, df) == pytest.approx(expected, abs=1e-6)


def test_cluster_labels_must_match_values() -> None:
    with pytest.raises(ValueError, match="2 cluster labels for 3 values"):
        cluster_t_ci([1.0, 2.0, 3.0], [0, 1])


# -------------------------------------------------------------------------- p-values


def test_wilson_pvalue_matches_the_interval() -> None:
    low, high = wilson_ci(17, 24)
    assert wilson_pvalue(17, 24, low) == pytest.approx(0.05, abs=1e-9)
    assert wilson_pvalue(17, 24, high) == pytest.approx(0.05, abs=1e-9)
    assert wilson_pvalue(17, 24, 17 / 24) == pytest.approx(1.0)
    assert wilson_pvalue(24, 24, 1.0) == 1.0 and wilson_pvalue(23, 24, 1.0) == 0.0


def test_binomial_pvalue_doubles_the_smaller_exact_tail() -> None:
    upper = sum(math.comb(24, k) * 0.6**k * 0.4 ** (24 - k) for k in range(20, 25))
    assert binomial_pvalue(20, 24, 0.6) == pytest.approx(2 * upper, rel=1e-9)
    assert binomial_pvalue(12, 24, 0.5) == 1.0
    assert binomial_pvalue(0, 10, 0.0) == 1.0 and binomial_pvalue(1, 10, 0.0) == 0.0


def test_bootstrap_pvalue_matches_the_interval() -> None:
    x = np.random.default_rng(0).normal(0.3, 0.2, 30)
    low, high = bootstrap_ci(x, seed=4)
    assert bootstrap_pvalue(x, low, seed=4) == pytest.approx(0.05, abs=0.002)
    assert bootstrap_pvalue(x, high, seed=4) == pytest.approx(0.05, abs=0.002)
    assert bootstrap_pvalue(x, 10.0, seed=4) == 0.0


# ---------------------------------------------------------------------- multiplicity


P = [0.01, 0.04, 0.03, 0.005, 0.2]


def test_holm_matches_r_p_adjust() -> None:
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.2), "holm")
    assert holm(P) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])


def test_bh_matches_r_p_adjust() -> None:
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.2), "BH")
    assert benjamini_hochberg(P) == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.2])


def test_adjust_dispatches_and_refuses_bad_p_values() -> None:
    assert list(adjust(P, "none")) == P
    assert list(adjust(P, Multiplicity.HOLM)) == list(holm(P))
    assert adjust([], "bh").size == 0
    with pytest.raises(ValueError, match="0 to 1"):
        holm([0.5, 1.2])
    with pytest.raises(ValueError):
        adjust(P, "bonferroni")


def test_holm_controls_the_family_wise_error_under_the_null() -> None:
    rng = np.random.default_rng(9)
    runs, m = 2000, 20
    p = rng.random((runs, m))  # every null true
    any_holm = np.mean([(holm(row) <= 0.05).any() for row in p])
    any_raw = np.mean((p <= 0.05).any(axis=1))
    assert any_holm <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert any_raw > 0.5


# ---------------------------------------------------------------------- paired tests


def test_clopper_pearson_matches_r_binom_test() -> None:
    # R: binom.test(7, 20)$conf.int
    assert clopper_pearson(7, 20) == pytest.approx((0.1539092, 0.5921885), abs=1e-6)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def test_mcnemar_exact_matches_the_binomial_tail() -> None:
    assert mcnemar_exact(8, 1) == pytest.approx(2 * 10 / 512)
    assert mcnemar_exact(1, 8) == mcnemar_exact(8, 1)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # R: binom.test(2, 12)$p.value
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857422, abs=1e-7)


def test_paired_rates_counts_discordant_pairs() -> None:
    base = [1] * 20 + [0] * 4
    cand = [1] * 14 + [0] * 6 + [0] * 2 + [1] * 2
    result = paired_rates(base, cand)
    assert (result.n, result.b, result.c) == (24, 6, 2)
    assert result.drop == pytest.approx(4 / 24)
    assert result.low < result.drop < result.high
    assert result.p_value == pytest.approx(mcnemar_exact(6, 2))


def test_paired_rates_interval_covers_the_true_drop() -> None:
    """Pairs with a known drop of 0.15 (baseline 0.8, candidate 0.65, correlated): the
    exact interval holds it in at least 95% of runs."""
    rng = np.random.default_rng(21)
    runs = 300
    hits = 0
    for _ in range(runs):
        u = rng.random(40)
        base = (u < 0.8).astype(float)
        cand = (u < 0.65).astype(float)
        flip = rng.random(40) < 0.1  # some candidate-only successes and failures
        cand[flip] = 1 - cand[flip]
        true_drop = 0.8 - (0.65 * 0.9 + 0.35 * 0.1)
        r = paired_rates(base, cand)
        hits += r.low <= true_drop <= r.high
    assert hits / runs >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / runs)


def test_paired_rates_refuses_unpaired_or_non_binary_samples() -> None:
    with pytest.raises(ValueError, match="equal counts"):
        paired_rates([1, 0], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        paired_rates([1, 0.5], [1, 0])


def test_non_inferiority_needs_the_upper_bound_below_the_margin() -> None:
    assert non_inferior(0.04, 0.05)
    assert not non_inferior(0.05, 0.05)
    assert not non_inferior(math.inf, 0.05)
    with pytest.raises(ValueError, match="margin"):
        non_inferior(0.0, -0.1)


# ------------------------------------------------------------------ the simulation, fast


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_statistics.py"
    spec = importlib.util.spec_from_file_location("bench_statistics", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_statistics", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_shipped_rule_holds_its_level_in_a_small_simulation() -> None:
    """``benchmarks/bench_statistics.py`` with few runs: no shipped rule is wrong more
    often than 5% plus three Monte-Carlo standard errors, and sequential sampling draws
    fewer samples than the fixed design with the same budget while deciding more checks
    than the first look alone."""
    bench = _bench()
    runs = 60
    rows = (bench.simulate_single(runs, seed=1, budget=96, with_cs=False)
            + bench.simulate_clustered(runs, seed=1)
            + bench.simulate_multiplicity(runs, seed=1)
            + bench.simulate_paired(runs, seed=1))
    slack = 3 * math.sqrt(0.05 * 0.95 / runs)
    for row in rows:
        if row.shipped:
            assert row.wrong <= 0.05 + slack, bench.render([row], runs)
    assert bench.samples_ratio(rows) < 0.9
    by_name = {(r.rule, r.truth): r for r in rows}
    for kind in ("rate", "score"):
        for truth in ("near above", "near below"):
            seq, first = by_name[(f"sequential {kind}", truth)], by_name[(f"fixed@24 {kind}", truth)]
            assert seq.inconclusive < first.inconclusive
    # and the naive rules the product does not ship are measurably wrong
    assert by_name[("none ×20", "all on threshold")].wrong > 0.2


def test_unseen_scenes_decides_sooner_growing_scenes_than_samples_per_scene() -> None:
    """The simulation of unseen_scenes' sequential sampling, with few runs: growing the
    scenes (what the check does) holds its level and, for a voice well above the bar,
    decides more often with fewer samples than growing each scene's samples would."""
    bench = _bench()
    runs = 40
    rows = {(r.rule, r.truth): r for r in bench.simulate_grown_clusters(runs, seed=1)}
    slack = 3 * math.sqrt(0.05 * 0.95 / runs)
    assert all(r.wrong <= 0.05 + slack for r in rows.values() if r.shipped)
    scenes, per_scene = rows[("unseen grows scenes", "far above")], rows[("unseen grows samples per scene", "far above")]
    assert scenes.inconclusive < per_scene.inconclusive and scenes.samples < per_scene.samples


def test_asymptotic_sequence_begins_at_start_and_covers() -> None:
    from pytest_scenelora.scoring.sequential import asymptotic_cs_path

    rng = np.random.default_rng(4)
    lows, _highs = asymptotic_cs_path(rng.normal(0, 1, 100), start=20)
    assert np.isinf(lows[:19]).all() and np.isfinite(lows[19:]).all()
    misses = sum(bool(np.any((lo > 0) | (hi < 0)))
                 for lo, hi in (asymptotic_cs_path(rng.normal(0, 1, 200), start=24) for _ in range(200)))
    assert misses / 200 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)


# ------------------------------------------------------------ verdicts with clusters


def test_decide_with_clusters_judges_on_the_clusters_and_says_how_many() -> None:
    from pytest_scenelora.scoring.verdict import decide

    scores = np.r_[np.full(4, 0.30), np.full(4, 0.05), np.full(4, 0.28)] + np.tile([0, 0.01, -0.01, 0.0], 3)
    labels = ["harbour"] * 4 + ["forest"] * 4 + ["winter"] * 4
    naive = decide("c", "a", scores, 0.1, seed=0)
    clustered = decide("c", "a", scores, 0.1, seed=0, clusters=labels)
    assert naive.passed and not clustered.passed  # two good topics and one poor are not "all topics"
    assert clustered.detail["interval"] == "clustered t" and clustered.detail["clusters"] == 3
    assert "n=12 in 3 clusters" in clustered.explain()
    one = decide("c", "a", scores, 0.1, seed=0, clusters=["x"] * 12)
    assert one.detail["interval"] == "bootstrap" and "share one cluster" in one.explain()


def test_a_clustered_success_rate_is_judged_with_the_wider_of_wilson_and_the_clustered_interval() -> None:
    from pytest_scenelora.scoring.statistics import wilson_ci
    from pytest_scenelora.scoring.verdict import decide, rejudge

    success = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    labels = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    v = decide("t", "a", success, 0.3, seed=0, rate=True, clusters=labels)
    wilson_low, _ = wilson_ci(9, 12, confidence=0.95)
    assert v.detail["interval"] == "wilson+clustered t" and v.detail["clusters"] == 3
    assert v.ci_low < wilson_low and not v.passed  # one poor topic of three: not decided
    assert "n=12 in 3 clusters" in v.explain()
    stricter = rejudge(v, confidence=0.99, seed=0)
    assert stricter.detail["interval"] == "wilson+clustered t" and stricter.ci_low <= v.ci_low
    assert decide("t", "a", success, 0.3, seed=0, rate=True).passed  # unclustered, it would pass
