"""Many verdicts at once: ``--scenelora-multiplicity none|holm|bh`` across a run, and
``--scenelora-regression drop|non-inferiority`` for the baseline gate.

The sessions use a check kind of the test's own whose samples are fixed numbers (so
the p-values are known in advance and no text is generated), on the tiny base with one
random adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pytest_scenelora.reporting.baseline import Change, compare_record
from pytest_scenelora.reporting.family import adjust_records
from pytest_scenelora.scoring.statistics import binomial_pvalue
from pytest_scenelora.scoring.verdict import decide

CONFTEST = '''
from pytest_scenelora.checks import CheckKind, Param
from pytest_scenelora.scoring.verdict import decide


def run_fixed_rate(context, spec, adapter):
    n, k = spec["samples"], spec["successes"]
    return decide("fixed_rate", adapter, [1.0] * k + [0.0] * (n - k), spec["threshold"],
                  seed=context.seed, rate=True)


def pytest_scenelora_check_kinds():
    return [CheckKind(name="fixed_rate", tolerance=0.05, run=run_fixed_rate, params={
        "samples": Param(int, 24, 1, 1000, "samples"),
        "successes": Param(int, 24, 0, 1000, "successes among them"),
        "threshold": Param(float, 0.5, 0.0, 1.0, "rate to reach"),
    })]
'''

# 24 of 24 against 0.5: p ~ 1e-7, decided under any adjustment. 20 of 24 against 0.6:
# p ~ 0.027 (exact binomial), a pass alone; three of them among five checks do not
# survive Holm (3 x 0.027 > 0.05) but do survive Benjamini-Hochberg (5/5 x 0.027 < 0.05).
STRONG = "  - kind: fixed_rate\n    name: strong_{i}\n    successes: 24\n    threshold: 0.5\n"
BORDERLINE = "  - kind: fixed_rate\n    name: borderline_{i}\n    successes: 20\n    threshold: 0.6\n"
SUITE = ("checks:\n" + "".join(STRONG.format(i=i) for i in range(2))
         + "".join(BORDERLINE.format(i=i) for i in range(3)))


def record(node: str, samples, threshold: float, status_p=None) -> dict:
    verdict = decide("fixed_rate", "a", samples, threshold, seed=0, rate=True)
    return {"id": node, "verdict": verdict.to_dict()}


def test_borderline_p_value_is_what_the_suite_assumes() -> None:
    assert 0.05 / 3 < binomial_pvalue(20, 24, 0.6) < 0.05
    assert binomial_pvalue(24, 24, 0.5) < 1e-4


def test_adjust_records_holm_makes_borderline_passes_inconclusive_and_says_why() -> None:
    strong = [1.0] * 24
    border = [1.0] * 20 + [0.0] * 4
    records = [record(f"s{i}", strong, 0.5) for i in range(2)] + [record(f"b{i}", border, 0.6) for i in range(3)]
    out, family = adjust_records(records, "holm")
    assert family.family == 5 and family.passes_lost == ["b0", "b1", "b2"]
    assert [r["verdict"]["status"] for r in out] == ["pass"] * 2 + ["inconclusive"] * 3
    reason = out[2]["verdict"]["detail"]["reason"]
    assert reason.startswith("pass at 95% alone (p=0.0") and "but not after Holm over 5 checks" in reason
    assert records[2]["verdict"]["status"] == "pass"  # the input is left alone
    same, bh = adjust_records(records, "bh")
    assert not bh.undecided and [r["verdict"]["status"] for r in same] == ["pass"] * 5
    assert bh.lines() == ["scenelora: multiplicity bh (Benjamini-Hochberg) over 5 checks: every decision holds"]
    untouched, none = adjust_records(records, "none")
    assert none.lines() == [] and untouched[2]["verdict"]["detail"]["p_adjusted"] == pytest.approx(
        records[2]["verdict"]["detail"]["p_value"])


def test_a_family_of_one_keeps_its_verdict() -> None:
    out, family = adjust_records([record("only", [1.0] * 20 + [0.0] * 4, 0.6)], "holm")
    assert out[0]["verdict"]["status"] == "pass" and not family.undecided


def test_records_without_a_p_value_stay_out_of_the_family() -> None:
    merge = {"id": "m", "verdict": {"status": "pass", "detail": {"statistic": "max"}}}
    out, family = adjust_records([merge], "holm")
    assert family.family == 0 and out == [merge]


def test_bonferroni_over_the_family_for_regressions() -> None:
    base = decide("r", "a", np.r_[np.ones(26), np.zeros(6)], 0.5, seed=0, rate=True).to_dict()
    cand = decide("r", "a", np.r_[np.ones(20), np.zeros(12)], 0.5, seed=0, rate=True).to_dict()
    common = {"id": "x", "name": "r", "adapter": "a", "tolerance": 0.05}
    alone = compare_record({**common, "verdict": base}, {**common, "verdict": cand})
    assert alone.change is Change.REGRESSED and alone.p_value == pytest.approx(2 / 64)
    among = compare_record({**common, "verdict": base}, {**common, "verdict": cand}, family=10)
    assert among.change is Change.UNCHANGED and "significant only at p <= 0.005 over 10 checks" in among.line()


# ------------------------------------------------------------------------- sessions


@pytest.fixture
def project(pytester: pytest.Pytester, make_adapter, tmp_path: Path) -> Path:
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".yaml", suite=SUITE)
    voices = tmp_path / "voices"
    voices.mkdir()
    make_adapter("Δ42_poetic", seed=31, directory=voices)
    return voices


def run(pytester: pytest.Pytester, voices: Path, tiny_base_dir: Path, *args: str) -> pytest.RunResult:
    # every option as --name=value: a bare path among the arguments would move the rootdir
    # (and the ini file search) up to the common ancestor
    return pytester.runpytest("-p", "no:cacheprovider", f"--adapter={voices}",
                              f"--base-model={tiny_base_dir}", "--device=cpu", *args)


def test_holm_across_the_run_turns_a_green_session_red_and_reports_it(pytester, project, tiny_base_dir,
                                                                       tmp_path) -> None:
    report = tmp_path / "results.json"
    alone = run(pytester, project, tiny_base_dir)
    alone.assert_outcomes(passed=5)
    assert alone.ret == 0 and "multiplicity" not in alone.stdout.str()
    holm = run(pytester, project, tiny_base_dir, "--scenelora-multiplicity=holm", f"--scenelora-json={report}")
    assert holm.ret == 1
    holm.stdout.fnmatch_lines([
        "scenelora: multiplicity holm (Holm) over 5 checks: 3 decisions no longer hold (now inconclusive):",
        "  suite.yaml::borderline_0[[]Δ42_poetic[]] (was pass)",
    ])
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["multiplicity"]["method"] == "holm" and document["multiplicity"]["family"] == 5
    statuses = {r["name"]: r["verdict"]["status"] for r in document["results"]}
    assert statuses["strong_0"] == "pass" and statuses["borderline_2"] == "inconclusive"


def test_bh_from_the_ini_file_keeps_them_and_a_bad_value_is_a_usage_error(pytester, project,
                                                                          tiny_base_dir) -> None:
    pytester.makeini("[pytest]\nscenelora_multiplicity = bh\n")
    bh = run(pytester, project, tiny_base_dir)
    assert bh.ret == 0
    bh.stdout.fnmatch_lines(["scenelora: multiplicity bh (Benjamini-Hochberg) over 5 checks: every decision holds"])
    bad = run(pytester, project, tiny_base_dir, "--scenelora-multiplicity=bonferroni")
    assert bad.ret == 4
    bad.stderr.fnmatch_lines(["*'bonferroni' is not a multiplicity adjustment; use none|holm|bh*"])


def test_compare_command_takes_the_non_inferiority_framing(tmp_path: Path, capsys) -> None:
    from pytest_scenelora.cli.main import main
    from pytest_scenelora.reporting.results import build_document, write_document

    rng = np.random.default_rng(5)
    good = rng.normal(0.3, 0.05, 24)

    def document(scores, name: str) -> Path:
        verdict = decide("scene_holds", "Δ42_poetic", scores, 0.03, seed=0).to_dict()
        record = {"id": "s.yaml::scene_holds[Δ42_poetic]", "suite": "s.yaml", "line": 3, "name": "scene_holds",
                  "adapter": "Δ42_poetic", "tolerance": 0.02, "verdict": verdict}
        path = tmp_path / name
        write_document(path, build_document([record], settings={"base_model": "tiny", "seed": 0},
                                            created="2025-06-01T10:00:00Z"))
        return path

    base = document(good, "base.json")
    close = document(good + rng.normal(0, 0.002, 24), "close.json")
    noisy = document(good - 0.01 + rng.normal(0, 0.15, 24), "noisy.json")
    assert main(["compare", str(base), str(noisy), "--color", "no"]) == 0  # no significant drop
    capsys.readouterr()
    assert main(["compare", str(base), str(noisy), "--color", "no", "--regression", "non-inferiority"]) == 1
    assert "no worse by 0.02: not shown" in capsys.readouterr().out
    assert main(["compare", str(base), str(close), "--color", "no", "--regression", "non-inferiority"]) == 0
    with pytest.raises(SystemExit) as exited:
        main(["compare", str(base), str(close), "--regression", "sideways"])
    assert exited.value.code == 2
    assert "'sideways' is not a regression framing; use drop|non-inferiority" in capsys.readouterr().err
