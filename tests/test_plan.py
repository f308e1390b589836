"""``scenelora plan``: the samples a decision needs, before a run spends them."""

from __future__ import annotations

import math

import pytest

from pytest_scenelora.cli.main import main
from pytest_scenelora.scoring.planning import fixed_samples, plan


def test_fixed_samples_follow_the_textbook_formulas() -> None:
    # one-sample score test, 95% two-sided, 80% power: ((1.96*sqrt(.24) + 0.8416*sqrt(.21)) / .1)^2
    expected = ((1.959964 * math.sqrt(0.24) + 0.841621 * math.sqrt(0.21)) / 0.1) ** 2
    assert fixed_samples(0.7, 0.6) == math.ceil(expected)
    assert fixed_samples(0.08, 0.03, sd=0.13) == math.ceil(((1.959964 + 0.841621) * 0.13 / 0.05) ** 2)
    assert fixed_samples(0.6, 0.6) is None
    assert fixed_samples(0.9, 0.6) < fixed_samples(0.7, 0.6)  # farther from the threshold: fewer


def test_plan_simulates_sequential_sampling_reproducibly() -> None:
    far = plan(0.2, 0.03, sd=0.13, runs=60)
    assert far.first_decided > 0.9 and far.sequential_mean < 30
    near = plan(0.08, 0.03, sd=0.13, runs=60)
    assert near.sequential_decided > 0.9 and near.first < near.sequential_mean < near.budget
    assert plan(0.08, 0.03, sd=0.13, runs=60) == near


def test_the_command_prints_both_designs(capsys) -> None:
    assert main(["plan", "--threshold", "0.6", "--expected", "0.75", "--max-samples", "96"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "scenelora plan: a success rate of 0.75 against the threshold 0.6 (95% verdicts)"
    assert out[1].startswith("  fixed design: ") and out[1].endswith(" samples decide it 80% of the time")
    assert out[3].startswith("  sequential (samples: 24, batches of 24, max_samples: 96): ")


@pytest.mark.parametrize(("args", "message"), [
    (["--expected", "1.7"], "scenelora: error: a success rate and its threshold lie between 0 and 1, not 1.7 and 0.6"),
    (["--expected", "0.7", "--max-samples", "10"], "scenelora: error: max_samples 10 is below samples 24"),
])
def test_bad_questions_get_one_line(capsys, args, message) -> None:
    assert main(["plan", "--threshold", "0.6", *args]) == 2
    assert capsys.readouterr().err.strip() == message
