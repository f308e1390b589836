"""Sequential sampling in real sessions: a check inconclusive at its ``samples`` keeps
sampling in batches until it is decided or reaches ``max_samples``; the verdict and the
JSON say how many samples it used and why it stopped; a warm rerun generates nothing.

The check kind is the test's own: it generates real samples on the tiny base (so the
cache is exercised), but scores sample *i* by a fixed low-discrepancy pattern with a 74%
success rate, so the verdict at each sample count is known: against 0.59 it is
inconclusive at 24 (18 of 24; Wilson 95% from 0.55) and at 48 (36; 98.3% from 0.58),
and passes at 72 (53; 98.3% from 0.598).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFTEST = '''
from pytest_scenelora.checks import CheckKind, Param, Request
from pytest_scenelora.scoring.verdict import decide


def run_patterned(context, spec, adapter):
    prompt = context.scene_prompt(context.scene(spec, adapter))
    [texts] = context.texts([Request(adapter, prompt, spec["samples"])])
    ok = [float((i * 0.6180339887) % 1 < spec["rate"]) for i in range(len(texts))]
    return decide("patterned", adapter, ok, spec["threshold"], seed=context.seed, rate=True, texts=texts)


def pytest_scenelora_check_kinds():
    return [CheckKind(name="patterned", tolerance=0.05, run=run_patterned, params={
        "samples": Param(int, 24, 1, 512, "samples"),
        "rate": Param(float, 0.74, 0.0, 1.0, "share of samples that succeed"),
        "threshold": Param(float, 0.59, 0.0, 1.0, "rate to reach"),
        "scene": Param(str, None, help="scene id"),
    })]
'''

SUITE = "scorer: char-ngram\ngeneration:\n  max_new_tokens: 4\nchecks:\n  - kind: patterned\n    samples: 24\n"


@pytest.fixture
def project(pytester: pytest.Pytester, make_adapter, tmp_path: Path) -> Path:
    pytester.makeconftest(CONFTEST)
    voices = tmp_path / "voices"
    voices.mkdir()
    make_adapter("Δ42_poetic", seed=41, directory=voices)
    return voices


def run(pytester: pytest.Pytester, voices: Path, tiny_base_dir: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", f"--adapter={voices}", f"--base-model={tiny_base_dir}",
                              "--device=cpu", *args)


def verdict_of(report: Path) -> dict:
    [record] = json.loads(report.read_text(encoding="utf-8"))["results"]
    return record["verdict"]


def test_an_inconclusive_check_samples_on_until_decided_and_replays_warm(pytester, project, tiny_base_dir,
                                                                        tmp_path) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    report = tmp_path / "cold.json"
    cold = run(pytester, project, tiny_base_dir, f"--scenelora-json={report}")
    cold.assert_outcomes(passed=1)
    verdict = verdict_of(report)
    assert verdict["status"] == "pass" and verdict["n"] == 72
    sequential = verdict["detail"]["sequential"]
    assert sequential["stop"] == "decided" and sequential["looks"] == 3 and sequential["max_samples"] == 96
    assert sequential["confidence_per_look"] == pytest.approx(1 - 0.05 / 3)
    assert verdict["confidence"] == pytest.approx(1 - 0.05 / 3)  # the interval shown is the look's
    warm_report = tmp_path / "warm.json"
    warm = run(pytester, project, tiny_base_dir, f"--scenelora-json={warm_report}")
    warm.assert_outcomes(passed=1)
    warm.stdout.fnmatch_lines(["scenelora: generated 0 new samples, reused * from the cache*"])
    again = verdict_of(warm_report)
    assert again["samples"] == verdict["samples"] and again["detail"]["sequential"] == sequential


def test_off_judges_samples_alone_and_the_budget_stops_it(pytester, project, tiny_base_dir, tmp_path) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    off = run(pytester, project, tiny_base_dir, "--scenelora-sequential=off")
    off.assert_outcomes(failed=1)
    off.stdout.fnmatch_lines(["*patterned[[]Δ42_poetic[]]: INCONCLUSIVE  score 0.75 (95% CI *, n=24)*"])
    # two looks: the second at 95% (the whole second half of the error), 36 of 48 from 0.61
    pytester.makefile(".yaml", suite=SUITE + "    max_samples: 48\n    threshold: 0.62\n")
    report = tmp_path / "budget.json"
    budget = run(pytester, project, tiny_base_dir, f"--scenelora-json={report}")
    budget.assert_outcomes(failed=1)
    budget.stdout.fnmatch_lines(["*sequential: 2 looks, samples 24 up to 48 (max_samples 48), stopped: budget*"])
    assert verdict_of(report)["detail"]["sequential"]["stop"] == "budget"


GROWING_CONFTEST = '''
from pytest_scenelora.checks import CheckKind, Param, Request
from pytest_scenelora.scoring.verdict import decide


def run_prompts(context, spec, adapter):
    prompts = context.probes(spec["examples"], adapter)
    texts = context.texts([Request(adapter, p, spec["samples"]) for p in prompts])
    flat = [t for batch in texts for t in batch]
    ok = [float((i * 0.6180339887) % 1 < 0.74) for i in range(len(flat))]
    return decide("prompts", adapter, ok, spec["threshold"], seed=context.seed, rate=True, texts=flat,
                  detail={"per_scene": [{"scene": p} for p in prompts]})


def pytest_scenelora_check_kinds():
    return [CheckKind(name="prompts", tolerance=0.05, run=run_prompts, grows="examples", params={
        "samples": Param(int, 6, 1, 64, "samples per prompt"),
        "examples": Param(int, 4, 1, 32, "prompts"),
        "threshold": Param(float, 0.59, 0.0, 1.0, "rate to reach"),
    })]
'''


def test_a_kind_that_grows_its_prompts_draws_more_prompts_not_more_samples(
        pytester, make_adapter, tiny_base_dir, tmp_path) -> None:
    """unseen_scenes' way (``grows="examples"``): 4 prompts of 6 samples, then 4 prompts
    more each look, each still of 6 samples; the same pattern as above decides at 72."""
    pytester.makeconftest(GROWING_CONFTEST)
    voices = tmp_path / "voices"
    voices.mkdir()
    make_adapter("Δ42_poetic", seed=41, directory=voices)
    suite = "scorer: char-ngram\ngeneration:\n  max_new_tokens: 4\nchecks:\n  - kind: prompts\n"
    pytester.makefile(".yaml", suite=suite)
    report = tmp_path / "grown.json"
    run(pytester, voices, tiny_base_dir, f"--scenelora-json={report}").assert_outcomes(passed=1)
    verdict = verdict_of(report)
    assert verdict["n"] == 72 and len(verdict["detail"]["per_scene"]) == 12  # 12 prompts of 6
    assert verdict["detail"]["sequential"] == {
        "samples": 6, "first": 4, "max_samples": 96, "looks": 3, "stop": "decided", "grows": "examples",
        "examples": 12, "max_examples": 16, "confidence": 0.95,
        "confidence_per_look": pytest.approx(1 - 0.05 / 3)}
    pytester.makefile(".yaml", suite=suite + "    max_samples: 48\n    threshold: 0.62\n")
    budget = run(pytester, voices, tiny_base_dir)
    budget.assert_outcomes(failed=1)
    budget.stdout.fnmatch_lines(["*sequential: 2 looks, examples 4 up to 8 (max_examples 8), stopped: budget*"])


def test_grows_must_name_an_int_parameter_next_to_samples() -> None:
    from pytest_scenelora.checks import CheckKind, Param
    from pytest_scenelora.checks.registry import by_name, shipped_kinds

    def kind(grows: str, **params: Param) -> CheckKind:
        return CheckKind(name="k", tolerance=0.05, run=lambda *a: None, grows=grows, params=params)

    samples = Param(int, 6, 1, 64, "samples")
    assert kind("examples", samples=samples, examples=Param(int, 4, 1, 32)).problem() is None
    for bad in (kind("examples", samples=samples), kind("examples", samples=samples, examples=Param(str, "x")),
                kind("examples", examples=Param(int, 4, 1, 32))):
        assert bad.problem() == "check kind 'k': grows='examples' must name an int parameter of a kind that has 'samples'"
    assert by_name(shipped_kinds())["unseen_scenes"].grows == "examples"  # more scenes, not more of each
