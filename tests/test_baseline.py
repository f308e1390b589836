"""The baseline gate as pure functions: the paired bootstrap, one comparison, the update."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from pytest_scenelora.reporting.baseline import (
    Change,
    Comparison,
    compare_record,
    paired_bootstrap,
    update_baseline,
)
from pytest_scenelora.reporting.results import ResultsFileError, build_document, load_document
from pytest_scenelora.scoring.verdict import decide


def rec(scores, *, name: str = "registers_unpack", adapter: str = "Δ42_poetic", threshold: float = 0.5,
        higher_is_better: bool = True, tolerance: float = 0.05, rate: bool = False) -> dict:
    verdict = decide(name, adapter, scores, threshold, seed=0, higher_is_better=higher_is_better, rate=rate)
    return {"id": f"s.yaml::{name}[{adapter}]", "suite": "s.yaml", "line": 3, "name": name,
            "adapter": adapter, "tolerance": tolerance, "verdict": verdict.to_dict()}


PROMPT_EFFECT = np.random.default_rng(42).normal(0.7, 0.15, 40)  # per-prompt spread that pairing cancels


def test_paired_bootstrap_sees_a_small_consistent_drop_that_unpaired_noise_hides() -> None:
    after = PROMPT_EFFECT - 0.04 + np.random.default_rng(1).normal(0, 0.01, 40)
    delta, low, high, paired = paired_bootstrap(PROMPT_EFFECT, after, seed=0)
    assert paired and high < 0 and low < delta < high
    _, _, u_high, u_paired = paired_bootstrap(PROMPT_EFFECT, after[:-1], seed=0)
    assert not u_paired and u_high > 0  # independent resampling: the prompt spread swamps it


def test_paired_bootstrap_degenerate_inputs() -> None:
    assert paired_bootstrap([0.5, 0.5], [0.5, 0.5], seed=0) == (0.0, 0.0, 0.0, True)
    delta, low, high, _ = paired_bootstrap([0.5], [0.1], seed=0)
    assert math.isclose(delta, -0.4) and low == -math.inf and high == math.inf
    assert paired_bootstrap([0.1, 0.2], [0.1, 0.2], seed=1) == paired_bootstrap([0.1, 0.2], [0.1, 0.2], seed=1)


def test_a_significant_drop_beyond_tolerance_regresses_with_one_line() -> None:
    base = rec(np.r_[np.ones(26), np.zeros(6)], rate=True)
    cand = rec(np.r_[np.ones(20), np.zeros(12)], rate=True)  # the same prompts, six more misses
    c = compare_record(base, cand, seed=0, baseline_date="2025-06-01")
    assert c.change is Change.REGRESSED and c.test == "mcnemar"
    # six pairs lost, none gained: McNemar's exact p is 2 / 2**6
    assert c.line() == ("Δ42_poetic registers_unpack: 0.81 → 0.62 (−0.19, McNemar exact p=0.031: "
                        "6 lost, 0 gained), baseline of 2025-06-01")
    assert c.ci_low < c.delta < c.ci_high  # the exact interval of the paired change
    continuous = compare_record(rec(PROMPT_EFFECT), rec(PROMPT_EFFECT - 0.1), baseline_date="2025-06-01")
    assert continuous.test == "bootstrap" and "95% CI −" in continuous.line()


def test_success_rates_are_gated_on_the_discordant_pairs() -> None:
    """Two runs at the same rate can still differ pair by pair; McNemar's test looks at
    the pairs: five swapped each way is no change at all, and five lost with none gained
    has p = 2/32, not below 0.05, however large the drop in rate looks."""
    base = np.r_[np.ones(20), np.zeros(12)]
    swapped = base.copy()
    swapped[:5], swapped[20:25] = 0, 1
    c = compare_record(rec(base, rate=True), rec(swapped, rate=True))
    assert (c.lost, c.gained, c.p_value, c.change) == (5, 5, 1.0, Change.UNCHANGED)
    five_lost = base.copy()
    five_lost[:5] = 0
    c = compare_record(rec(base, rate=True), rec(five_lost, rate=True))
    assert (c.lost, c.gained) == (5, 0) and c.p_value == pytest.approx(0.0625)
    assert c.change is Change.UNCHANGED  # a 0.16 drop, but five pairs cannot show it at 95%
    unpaired = compare_record(rec(base, rate=True), rec(five_lost[:-1], rate=True))
    assert unpaired.test == "bootstrap" and not unpaired.paired


def test_non_inferiority_needs_the_candidate_to_bound_its_drop() -> None:
    """The same small drop passes the ``drop`` gate (not significant) and fails the
    non-inferiority gate when the samples cannot bound it below the tolerance; a
    candidate that tracks its baseline closely shows it is no worse."""
    base = rec(PROMPT_EFFECT, tolerance=0.05)
    noisy = rec(PROMPT_EFFECT + np.random.default_rng(2).normal(0, 0.3, 40), tolerance=0.05)
    assert compare_record(base, noisy).change is not Change.REGRESSED
    c = compare_record(base, noisy, framing="non-inferiority", baseline_date="2025-06-01")
    assert c.change is Change.REGRESSED and c.worse_bound > 0.05
    assert "; no worse by 0.05: not shown (worse by at most" in c.line()
    close = rec(PROMPT_EFFECT - 0.01 + np.random.default_rng(3).normal(0, 0.01, 40), tolerance=0.05)
    ok = compare_record(base, close, framing="non-inferiority")
    assert ok.change is Change.UNCHANGED and ok.worse_bound < 0.05 and "shown (worse by" in ok.line()
    assert Comparison.from_dict(ok.to_dict()) == ok
    with pytest.raises(ValueError):
        compare_record(base, close, framing="sideways")


def test_a_drop_within_tolerance_or_not_significant_does_not_regress() -> None:
    base = rec(PROMPT_EFFECT)
    assert compare_record(base, rec(PROMPT_EFFECT - 0.03)).change is Change.UNCHANGED  # < tolerance 0.05
    noisy = PROMPT_EFFECT - 0.08 + np.random.default_rng(2).normal(0, 0.5, 40)  # a drop lost in noise
    c = compare_record(base, rec(noisy), seed=0)
    assert c.ci_high > 0 and c.change is Change.UNCHANGED
    assert compare_record(base, rec(PROMPT_EFFECT)).change is Change.UNCHANGED  # retrained identically


def test_an_improvement_is_reported_not_failed() -> None:
    c = compare_record(rec(PROMPT_EFFECT), rec(PROMPT_EFFECT + 0.1))
    assert c.change is Change.IMPROVED and not c.regressed
    assert "improved 0." in c.line()


def test_lower_is_better_checks_regress_upwards_and_deterministic_ones_exactly() -> None:
    def merge(diffs):
        r = rec(diffs, name="merge_equivalence", threshold=1e-3, higher_is_better=False, tolerance=1e-3)
        r["verdict"]["detail"]["statistic"] = "max"
        r["verdict"]["score"] = max(diffs)
        return r

    c = compare_record(merge([1e-6, 2e-6]), merge([1e-6, 0.5]))
    assert c.change is Change.REGRESSED and c.exact
    assert "(+0.50, exact)" in c.line()
    assert compare_record(merge([1e-6, 2e-6]), merge([1e-6, 3e-4])).change is Change.UNCHANGED


def test_a_check_whose_statistic_changed_is_not_compared_with_its_baseline() -> None:
    # registers_unpack judged the share of samples on the scene and in the register, then the
    # mean weaker margin: a stored share of 0.81 against a margin of 0.18 is not a drop of 0.63
    share = rec(np.r_[np.ones(26), np.zeros(6)], rate=True)
    margin = rec(0.18 + 0.05 * np.tile([-1.0, 1.0], 16), threshold=0.1, tolerance=0.02)
    c = compare_record(share, margin, baseline_date="2026-11-30")
    assert c.change is Change.NEW and not c.regressed
    assert c.line() == ("Δ42_poetic registers_unpack: 0.18 (new: the baseline of 2026-11-30 judged a success "
                        "rate here (0.81), this run a score; not compared: update the baseline)")
    assert Comparison.from_dict(c.to_dict()) == c
    assert compare_record(margin, share).judged_before == "a score"
    assert compare_record(share, share).change is Change.UNCHANGED
    assert compare_record(margin, margin).change is Change.UNCHANGED


def test_a_broken_candidate_regresses_and_new_or_missing_checks_are_named() -> None:
    base = rec(PROMPT_EFFECT)
    broken = rec(np.r_[PROMPT_EFFECT[:-1], np.nan])
    assert compare_record(base, broken).change is Change.REGRESSED
    assert compare_record(None, base).change is Change.NEW
    missing = compare_record(base, None, baseline_date="2025-06-01")
    assert missing.change is Change.MISSING and "not run" in missing.line()


def test_the_suite_tolerance_wins_over_the_baseline_one() -> None:
    base, cand = rec(PROMPT_EFFECT, tolerance=0.5), rec(PROMPT_EFFECT - 0.1, tolerance=0.01)
    assert compare_record(base, cand).change is Change.REGRESSED


def document(*records: dict, created: str = "2025-06-01T00:00:00Z") -> dict:
    return build_document(records, settings={"base_model": "tiny", "seed": 0}, created=created)


def test_update_keeps_checks_this_run_did_not_produce(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    a, b = rec(PROMPT_EFFECT, adapter="Δ42_logic"), rec(PROMPT_EFFECT, adapter="Δ42_poetic")
    update_baseline(path, document(a, b))
    update_baseline(path, document(rec(PROMPT_EFFECT - 0.2, adapter="Δ42_poetic")))
    stored = {r["adapter"]: r for r in load_document(path, what="baseline")["results"]}
    assert set(stored) == {"Δ42_logic", "Δ42_poetic"}
    assert stored["Δ42_poetic"]["verdict"]["score"] == pytest.approx(PROMPT_EFFECT.mean() - 0.2)


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    docs = [document(rec(PROMPT_EFFECT, adapter=f"Δ42_r{i}")) for i in range(8)]
    threads = [threading.Thread(target=update_baseline, args=(path, d)) for d in docs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(load_document(path)["results"]) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_malformed_baseline_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text("{oops")
    with pytest.raises(ResultsFileError, match=r"baseline\.json: the baseline is not valid JSON"):
        update_baseline(path, document(rec(PROMPT_EFFECT)))
    assert path.read_text() == "{oops"


def with_sequential(record: dict, samples_per_prompt: int, confidence: float = 0.95) -> dict:
    record["verdict"]["detail"]["sequential"] = {"samples": samples_per_prompt, "confidence": confidence}
    record["verdict"]["confidence"] = 0.983 if confidence == 0.95 else confidence
    return record


def test_a_sequential_run_pairs_the_samples_both_runs_drew() -> None:
    """A candidate that sampled on to 48 per topic against a baseline of 24: each topic's
    first 24 pair with the baseline's, and the gate states the suite's 95%, not the look's."""
    topic_a = np.r_[np.ones(20), np.zeros(4)]
    topic_b = np.r_[np.ones(22), np.zeros(2)]
    base = with_sequential(rec(np.r_[topic_a, topic_b], rate=True), 24)
    lost_a = topic_a.copy()
    lost_a[:8] = 0  # eight pairs of topic a lost, none gained
    extra = np.ones(24)  # the samples only the candidate drew, which pair with nothing
    cand = with_sequential(rec(np.r_[lost_a, extra, topic_b, extra], rate=True), 48)
    c = compare_record(base, cand)
    assert c.test == "mcnemar" and (c.lost, c.gained) == (8, 0) and c.paired
    assert c.confidence == 0.95 and c.change is Change.REGRESSED
    unknown = rec(np.r_[lost_a, extra, topic_b, extra], rate=True)  # no sequential record: unpaired
    assert not compare_record(base, unknown).paired


def test_a_check_that_drew_more_scenes_pairs_the_scenes_both_runs_tried() -> None:
    """unseen_scenes grows its scenes, not its samples per scene: a run that drew five
    scenes pairs with a baseline of three on the three they share, sample for sample."""

    def scenes_rec(rows: list[list[float]], cores: list[str]) -> dict:
        record = rec(np.concatenate(rows), name="unseen_scenes", rate=True)
        detail = record["verdict"]["detail"]
        detail["per_scene"] = [{"scene": c, "rate": float(np.mean(r))} for c, r in zip(cores, rows, strict=True)]
        detail["sequential"] = {"samples": 8, "grows": "examples", "examples": len(rows)}
        return record

    held = [1.0] * 8
    base = scenes_rec([held, held, held], ["a", "b", "c"])
    grown = scenes_rec([held, held, [0.0] * 8, held, held], ["a", "b", "c", "d", "e"])
    c = compare_record(base, grown)
    assert c.paired and c.test == "mcnemar" and (c.lost, c.gained) == (8, 0)  # scene c, pair by pair
    assert c.change is Change.REGRESSED
    reordered = scenes_rec([held, [0.0] * 8, held, held, held], ["d", "c", "b", "a", "e"])
    c = compare_record(base, reordered)  # another order of draws: paired by scene, not by position
    assert c.paired and (c.lost, c.gained) == (8, 0)
    other = scenes_rec([held, held, [0.0] * 8, held, held], ["a", "x", "c2", "d", "e"])
    shared_a = compare_record(base, other)  # only scene a is shared: 8 pairs, none lost
    assert shared_a.paired and (shared_a.lost, shared_a.gained) == (0, 0)
    lying = scenes_rec([held, held, held], ["a", "b", "c"])
    lying["verdict"]["detail"]["per_scene"] += [{"scene": "d"}, {"scene": "e"}]  # more than its samples
    assert not compare_record(lying, grown).paired
    twice = scenes_rec([held, held, [0.0] * 8, held, held], ["a", "b", "c", "a", "e"])
    assert not compare_record(base, twice).paired
