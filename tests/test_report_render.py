"""The report layer as pure functions: records in, text, Markdown, HTML and annotations out.

No model is loaded here: records are built with the real :func:`decide`, the way the
checks build them, so these tests run in milliseconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pytest_scenelora.cli.main import main
from pytest_scenelora.reporting.github import annotations, escape_data, escape_property, step_summary
from pytest_scenelora.reporting.html import render_html
from pytest_scenelora.reporting.results import ResultsFileError, build_document, load_document, write_document
from pytest_scenelora.reporting.terminal import ci_bar, record_summary, render_coherence
from pytest_scenelora.scoring.verdict import decide

ANSI = re.compile(r"\x1b\[")


def make_record(adapter: str, name: str, scores, threshold: float, *, line: int = 4, rate: bool = False,
                suite: str = "suites/registers.yaml", texts=None, detail=None, baseline=None) -> dict:
    verdict = decide(name, adapter, scores, threshold, seed=0, rate=rate, texts=texts, detail=detail)
    return {"id": f"{suite}::{name}[{adapter}]", "suite": suite, "line": line, "name": name, "kind": name,
            "adapter": adapter, "tolerance": 0.05, "baseline": baseline, "verdict": verdict.to_dict(),
            "adapter_info": {"content_hash": "ab" * 32, "scene": "Δ42", "role": adapter.split("_")[1],
                             "path": f"/adapters/{adapter}.safetensors"},
            "base": {"model": "tiny", "name": "tiny", "fingerprint": "f" * 64, "device": "cpu",
                     "dtype": "float32", "quantization": "none"}}


@pytest.fixture
def records() -> list[dict]:
    rmap = {"axes": "principal axes of the register centroids", "explained": 0.9,
            "centroids": {"logic": [0.8, 0.1], "poetic": [-0.5, 0.6], "body": [-0.3, -0.7]},
            "points": [[0.5, 0.1], [0.4, 0.0], None, [-0.2, 0.3]],
            "labels": ["logic", "logic", "(empty)", "poetic"]}
    return [
        make_record("Δ42_logic", "registers_unpack", [1, 1, 0, 1], 0.6, rate=True,
                    texts=["a <b>", "c", "", "d"], detail={"register_map": rmap}),
        make_record("Δ42_poetic", "registers_unpack", [1, 1, 1, 1, 1, 1, 1, 1], 0.6, rate=True),
        make_record("Δ42_logic", "scene_holds", [0.1, 0.12, 0.09], 0.03, line=9,
                    suite="suites/scene_field.yaml",
                    baseline={"change": "regressed", "delta": -0.2, "line": "Δ42_logic scene_holds: 0.30 → 0.10"}),
    ]


def test_plain_report_has_no_escape_codes_and_shows_every_cell(records) -> None:
    text = render_coherence(records, color=False, width=100)
    assert not ANSI.search(text)
    assert "registers_unpack" in text and "scene_holds" in text
    assert "Δ42_logic" in text and "Δ42_poetic" in text
    assert "0.75 INCONCL" in text  # 3 of 4 at threshold 0.6: the Wilson interval straddles it
    assert "1.00 PASS" in text
    assert "▼ −0.20 regressed" in text
    lines = text.splitlines()
    assert lines[-1] == ("scenelora: 3 checks on 2 adapters: 2 passed, 0 failed, 1 inconclusive; "
                         "against the baseline of unknown date: 1 regressed, 0 improved")
    assert "┃" in text and "●" in text  # the interval bars


def test_coloured_report_has_the_same_text_plus_colour(records) -> None:
    coloured = render_coherence(records, color=True, width=100)
    assert ANSI.search(coloured)
    stripped = "\n".join(line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", coloured).splitlines())
    assert stripped.strip() == render_coherence(records, color=False, width=100).strip()


def test_interval_bar_places_interval_score_and_threshold() -> None:
    verdict = {"score": 0.5, "ci_low": 0.4, "ci_high": 0.6, "threshold": 0.9, "detail": {"interval": "wilson"}}
    bar = "".join(ch for ch, _ in ci_bar(verdict, width=11))
    assert bar == "────━●━──┃─"


def test_summary_line_counts() -> None:
    recs = [make_record("Δ42_a", "x", [0.0, 0.0, 0.01], 0.5)]
    assert record_summary(recs) == "scenelora: 1 checks on 1 adapter: 0 passed, 1 failed, 0 inconclusive"


def test_annotations_point_at_the_suite_line_and_escape_their_text(records, tmp_path: Path) -> None:
    lines = annotations(records, root=tmp_path, workspace=str(tmp_path))
    assert len(lines) == 2  # the inconclusive one and the regressed one; the pass is silent
    assert lines[0].startswith("::error file=suites/registers.yaml,line=4,"
                               "title=scenelora registers_unpack[Δ42_logic] inconclusive::")
    assert "%0A" in lines[0] and "\n" not in lines[0]
    assert lines[1].startswith("::error file=suites/scene_field.yaml,line=9,"
                               "title=scenelora scene_holds[Δ42_logic] regressed::Δ42_logic scene_holds: 0.30 → 0.10")
    assert escape_property("a:b,c%") == "a%3Ab%2Cc%25"
    assert escape_data("50%\nx") == "50%25%0Ax"


def test_step_summary_is_a_markdown_table(records) -> None:
    text = step_summary(records, environment={"python": "3.11", "device": "cpu"})
    assert text.startswith("## scenelora coherence\n")
    assert "| adapter | registers_unpack | scene_holds |" in text
    assert "| **Δ42_logic** | ⚠️ 0.75" in text
    assert "### Regressions" in text and "- Δ42_logic scene_holds: 0.30 → 0.10" in text


def test_document_round_trips_and_keeps_per_sample_scores(records, tmp_path: Path) -> None:
    document = build_document(records, settings={"base_model": "tiny", "seed": 3, "embedder": None})
    path = tmp_path / "r.json"
    write_document(path, document)
    loaded = load_document(path)
    assert [r["id"] for r in loaded["results"]] == [r["id"] for r in document["results"]]
    assert loaded["results"][0]["verdict"]["samples"] == [1.0, 1.0, 0.0, 1.0]
    assert loaded["adapters"]["Δ42_logic"]["role"] == "logic"
    assert loaded["base"]["fingerprint"] == "f" * 64
    env = loaded["environment"]
    assert env["seed"] == 3 and env["device"] == "cpu" and env["dtype"] == "float32"
    assert {"python", "torch", "transformers", "peft", "embedder"} <= env.keys()
    assert "adapter_info" not in loaded["results"][0]  # lifted into the adapters block


@pytest.mark.parametrize(("content", "words"), [
    ("{not json", "is not valid JSON (line 1, column 2"),
    ('{"format": "other"}', 'not a scenelora results file (no "format": "scenelora-results")'),
    ('{"format": "scenelora-results", "version": 1, "results": [{"id": "x"}]}', 'result #0 has no "id" or "verdict"'),
])
def test_bad_results_files_are_one_line_errors(tmp_path: Path, content: str, words: str, capsys) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ResultsFileError, match=re.escape(words)):
        load_document(path)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"scenelora: error: {path}: ")
    assert "Traceback" not in err


def test_missing_results_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match="no such results file; write one with `pytest --scenelora-json"):
        load_document(tmp_path / "nope.json")


def test_html_is_self_contained_with_the_plots(records) -> None:
    document = build_document(records, settings={"base_model": "tiny", "seed": 0})
    html = render_html(document)
    assert html.startswith("<!DOCTYPE html>")
    assert '<svg id="heatmap"' in html and html.count('class="cell"') == 3
    assert '<svg id="register-map"' in html and html.count('class="sample"') == 3  # the empty one is left out
    assert html.count('class="centroid"') == 3
    assert "a &lt;b&gt;" in html  # sample texts are escaped
    external = re.findall(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', html)
    assert not external and "<script" not in html and "@import" not in html and "url(" not in html


def test_report_command_renders_the_html_offline(records, tmp_path: Path, capsys) -> None:
    path = tmp_path / "r.json"
    write_document(path, build_document(records, settings={"base_model": "tiny", "seed": 0}))
    out = tmp_path / "out.html"
    assert main(["report", str(path), "--html", str(out), "--color", "no"]) == 0
    assert '<svg id="heatmap"' in out.read_text(encoding="utf-8")
    text = capsys.readouterr().out
    assert "registers_unpack" in text and not ANSI.search(text)


def test_compare_exits_1_on_a_regression_and_0_otherwise(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    good = rng.normal(0.3, 0.02, 24)

    def document(scores, path: Path) -> Path:
        recs = [make_record("Δ42_poetic", "scene_holds", scores, 0.03),
                make_record("Δ42_logic", "scene_holds", good, 0.03)]
        write_document(path, build_document(recs, settings={"base_model": "tiny", "seed": 0},
                                            created="2025-06-01T10:00:00Z"))
        return path

    base = document(good, tmp_path / "base.json")
    same = document(good + rng.normal(0, 0.005, 24), tmp_path / "same.json")
    worse = document(good - 0.15, tmp_path / "worse.json")
    assert main(["compare", str(base), str(same), "--color", "no"]) == 0
    out = capsys.readouterr().out
    assert "2 checks: 0 regressed, 0 improved, 2 unchanged" in out
    assert main(["compare", str(base), str(worse), "--color", "no"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"regressed: Δ42_poetic scene_holds: 0\.30 → 0\.15 \(−0\.15, 95% CI −0\.15\.\.−0\.15\), "
                     r"baseline of 2025-06-01", out), out
    assert main(["compare", str(worse), str(base), "--color", "no"]) == 0  # an improvement passes
    assert "improved" in capsys.readouterr().out
    broken = tmp_path / "broken.json"
    broken.write_text("[]")
    assert main(["compare", str(broken), str(base)]) == 2
    assert "not a scenelora baseline" in capsys.readouterr().err


def test_results_document_is_valid_json_without_nan(records, tmp_path: Path) -> None:
    records[0]["verdict"]["score"] = None
    path = tmp_path / "r.json"
    write_document(path, build_document(records, settings={"base_model": "tiny", "seed": 0}))
    json.loads(path.read_text(encoding="utf-8"))


def test_progress_is_drawn_in_place_and_erased_when_done() -> None:
    from pytest_scenelora.engine.progress import TerminalProgress, progress_line

    written: list[str] = []
    began: list[bool] = []
    progress = TerminalProgress(written.append, width=60, begin=lambda: began.append(True), min_interval=0)
    progress("generating 64 samples (Δ42_poetic)", 0, 64)
    progress("generating 64 samples (Δ42_poetic)", 32, 64)
    progress("generating 64 samples (Δ42_poetic)", 64, 64)
    assert began == [True]
    assert written[1].startswith("\rscenelora: ████████████░░░░░░░░░░░░ 32/64 generating")
    assert all(len(w) <= 61 for w in written) and written[1].endswith("…")
    assert written[-1].strip() == "" and written[-1].startswith("\r") and written[-1].endswith("\r")
    assert progress_line("x", 1, 2, 200) == "scenelora: ████████████░░░░░░░░░░░░ 1/2 x"



def test_a_report_for_a_pipe_keeps_every_column_at_its_natural_width() -> None:
    """Six checks do not fit 80 columns; a terminal cuts them, a pipe or CI log must not."""
    kinds = ["registers_unpack", "adapter_active", "scene_holds", "merge_equivalence",
             "style_survives_topic_shift", "unseen_scenes"]
    many = [make_record(f"Δ42_{role}", kind, [0.4, 0.5, 0.45], 0.1)
            for role in ("logic", "poetic") for kind in kinds]
    cut = render_coherence(many, color=False, width=80)
    assert "style_survives_topic_shift" not in cut  # what a narrow terminal gets
    fitted = render_coherence(many, color=False, width=80, fit=True)
    header = next(line for line in fitted.splitlines() if line.startswith("adapter"))
    assert sorted(header.split()[1:]) == sorted(kinds)  # every check, none cut
