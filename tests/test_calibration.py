"""The threshold calibration (benchmarks/bench_calibration.py): its negative controls lack
exactly what they claim to lack, and the range it reports for a threshold is the one
where every good voice passes and every control fails decisively."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pytest_scenelora import shipped

_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_calibration.py"
_spec = importlib.util.spec_from_file_location("bench_calibration", _SCRIPT)
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return calibration.read_rows(shipped.training_data_file())


def test_the_no_scene_control_has_no_delta42_text_and_everything_else_of_its_role(rows) -> None:
    poetic = [r for r in rows if r["role"] == "poetic"]
    delta = {r["text"] for r in poetic if r.get("scene") == "Δ42"}
    control = calibration.control_rows(rows, "no-scene", "poetic")
    (prompt,) = [r for r in control if r.get("scene") == "Δ42"]  # the one the trainer insists on
    assert prompt["text"] not in delta and not delta & {r["text"] for r in control}
    assert len(control) == len([r for r in poetic if r.get("scene") != "Δ42"]) + 1
    assert {r["role"] for r in control} == {"poetic"}


def test_the_mixed_register_control_speaks_every_register_under_one_role(rows) -> None:
    control = calibration.control_rows(rows, "mixed-register", "logic")
    assert {r["role"] for r in control} == {"logic"}
    assert sorted(r["text"] for r in control) == sorted(r["text"] for r in rows)


def test_the_parrot_answers_every_prompt_with_a_delta42_text_of_its_role(rows) -> None:
    own = {r["text"] for r in rows if r["role"] == "body" and r.get("scene") == "Δ42"}
    control = calibration.control_rows(rows, "parrot", "body")
    assert {r["text"] for r in control} <= own
    prompts = {(r.get("scene"), r.get("topic")) for r in rows if r["role"] == "body"}
    assert {(r.get("scene"), r.get("topic")) for r in control} == prompts  # same prompts, other answers


def test_the_collapsing_control_is_its_role_on_delta42_and_another_role_on_every_topic(rows) -> None:
    control = calibration.control_rows(rows, "collapsing", "poetic")
    own = [r for r in control if r.get("scene")]
    assert own == [r for r in rows if r["role"] == "poetic" and r.get("scene") == "Δ42"]
    topics = [r for r in control if r.get("topic")]
    logic = {(r["topic"], r["text"]) for r in rows if r["role"] == "logic" and r.get("topic")}
    assert {(r["topic"], r["text"]) for r in topics} == logic and {r["role"] for r in topics} == {"poetic"}
    assert {r["topic"] for r in topics} == {r["topic"] for r in rows if r.get("topic")}  # every topic
    assert {r["text"] for r in calibration.control_rows(rows, "collapsing", "logic") if r.get("topic")} == \
        {r["text"] for r in rows if r["role"] == "poetic" and r.get("topic")}


def _row(voice: str, check: str, low: float, high: float, *, higher: bool = True,
         threshold: float = 0.5) -> dict:
    return {"voice": voice, "adapter": "Δ42_poetic", "check": check, "score": (low + high) / 2,
            "low": low, "high": high, "threshold": threshold, "higher_is_better": higher,
            "status": "?", "n": 24}


def test_the_range_runs_from_the_controls_highest_upper_bound_to_the_good_voices_lowest_lower_bound() -> None:
    rows = [_row("good", "scene_holds", 0.3, 0.4), _row("good", "scene_holds", 0.2, 0.3),
            _row("no-scene", "scene_holds", 0.0, 0.15),
            _row("parrot", "scene_holds", 0.25, 0.45)]  # parrot need not fail scene_holds: ignored
    (entry,) = calibration.ranges([{**r, "threshold": 0.03} for r in rows])
    assert entry["range"] == [0.15, 0.2] and entry["separable"] and not entry["inside"]
    (entry,) = calibration.ranges([{**r, "threshold": 0.18} for r in rows])
    assert entry["inside"]


def test_overlapping_intervals_leave_no_threshold_and_lower_is_better_is_mirrored() -> None:
    overlap = [_row("good", "unseen_scenes", 0.45, 0.7), _row("parrot", "unseen_scenes", 0.3, 0.5)]
    (entry,) = calibration.ranges(overlap)
    assert not entry["separable"] and not entry["inside"]
    merge = [_row("good", "merge_equivalence", 0.0, 0.0002, higher=False, threshold=0.001),
             _row("doubled-merge", "merge_equivalence", 0.04, 0.09, higher=False, threshold=0.001)]
    (entry,) = calibration.ranges(merge)
    assert entry["range"] == [0.0002, 0.04] and entry["inside"]


def test_the_results_document_becomes_rows(tmp_path) -> None:
    document = {"results": [{"adapter": "Δ42_logic", "kind": "scene_holds", "verdict": {
        "score": 0.2, "ci_low": 0.1, "ci_high": 0.3, "threshold": 0.03, "higher_is_better": True,
        "status": "pass", "n": 32}}]}
    (row,) = calibration.rows_of(json.loads(json.dumps(document)), "good")
    assert row == {"voice": "good", "adapter": "Δ42_logic", "check": "scene_holds", "score": 0.2,
                   "low": 0.1, "high": 0.3, "threshold": 0.03, "higher_is_better": True,
                   "status": "pass", "n": 32}
