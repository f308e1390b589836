"""Reports from real sessions on the tiny base: the terminal matrix, JSON, HTML in a browser,
and GitHub Actions output. One small suite (char n-gram scorer, a few samples) on two
random adapters keeps each run to seconds; generations are cached between the runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ANSI = re.compile(r"\x1b\[")

SUITE = """\
suite: report smoke
scorer: char-ngram
generation:
  max_new_tokens: 10
checks:
  - kind: adapter_active
    probes: 4
  - kind: registers_unpack
    samples: 6
  - kind: merge_equivalence
    probes: 2
"""


@pytest.fixture(scope="module")
def voices(make_adapter, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report-voices")
    make_adapter("Δ42_poetic", seed=1, directory=folder)
    make_adapter("Δ42_logic", seed=2, directory=folder)
    return folder


@pytest.fixture(scope="module")
def xdist_run(voices, tiny_base_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One session under ``-n 2``, as CI runs it, writing the JSON and HTML reports."""
    where = tmp_path_factory.mktemp("report-run")
    (where / "suite.yaml").write_text(SUITE, encoding="utf-8")
    (where / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # the rootdir, as in a project
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "PYTEST_ADDOPTS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "suite.yaml",
         "--adapter", str(voices), "--base-model", str(tiny_base_dir), "--device", "cpu",
         "--scenelora-json", "out/results.json", "--scenelora-html", "out/report.html"],
        cwd=where, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc, where


def test_xdist_session_prints_the_plain_matrix(xdist_run) -> None:
    proc, _ = xdist_run
    out = proc.stdout
    assert proc.returncode == 1, out  # the random voices are in no register: registers_unpack fails
    assert not ANSI.search(out)  # not a terminal: plain text
    assert "░" not in out and "█" not in out  # and no progress bar
    section = out[out.index("scenelora coherence"):]
    header = next(line for line in section.splitlines() if line.startswith("adapter"))
    assert header.split() == ["adapter", "adapter_active", "registers_unpack", "merge_equivalence"]
    assert re.search(r"Δ42_logic +\d\.\d\d PASS +[−-]?0\.\d\d+ FAIL +\S+ PASS", section), section
    assert "━ 95% interval  ● score  ┃ threshold" in section
    assert "scenelora: 6 checks on 2 adapters: 4 passed, 2 failed, 0 inconclusive" in section
    assert "scenelora: results written to out/results.json" in out


def test_json_has_every_verdict_with_samples_adapters_base_and_environment(xdist_run, voices) -> None:
    _, where = xdist_run
    doc = json.loads((where / "out/results.json").read_text(encoding="utf-8"))
    assert doc["format"] == "scenelora-results" and doc["version"] == 1
    assert [(r["name"], r["adapter"]) for r in doc["results"]] == [
        (kind, adapter) for kind in ("adapter_active", "registers_unpack", "merge_equivalence")
        for adapter in ("Δ42_logic", "Δ42_poetic")]
    for r in doc["results"]:
        v = r["verdict"]
        assert r["suite"] == "suite.yaml" and r["line"] > 0 and r["tolerance"] > 0
        assert len(v["samples"]) == v["n"] and v["threshold"] is not None
        assert v["ci_low"] is not None and v["ci_high"] is not None
    registers = next(r for r in doc["results"] if r["name"] == "registers_unpack")
    assert len(registers["verdict"]["detail"]["sample_texts"]) == 6
    rmap = registers["verdict"]["detail"]["register_map"]
    assert set(rmap["centroids"]) == {"logic", "poetic", "body", "silence"} and len(rmap["points"]) == 6
    merge = next(r for r in doc["results"] if r["name"] == "merge_equivalence")
    assert merge["verdict"]["status"] == "pass" and merge["verdict"]["higher_is_better"] is False
    poetic = doc["adapters"]["Δ42_poetic"]
    assert poetic["scene"] == "Δ42" and poetic["role"] == "poetic" and len(poetic["content_hash"]) == 64
    assert Path(poetic["path"]).parent == voices
    assert len(doc["base"]["fingerprint"]) == 64
    env = doc["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["seed"] == 0
    for package in ("python", "torch", "transformers", "peft"):
        assert env[package], package
    assert doc["summary"] == {"checks": 6, "passed": 4, "failed": 2, "inconclusive": 0,
                              "regressed": 0, "improved": 0}
    assert not [p.name for p in (where / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="needs Debian's `chromium` package to render the HTML report "
                                                "(apt-get install -y chromium; .ci/run installs it)")
def test_html_report_renders_in_headless_chromium(xdist_run, tmp_path: Path) -> None:
    _, where = xdist_run
    html = (where / "out/report.html").read_text(encoding="utf-8")
    assert "<script" not in html and not re.search(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', html)
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (where / "out/report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = proc.stdout
    assert proc.returncode == 0 and "<svg" in dom, proc.stderr[-2000:]
    assert len(re.findall(r'<svg id="heatmap"', dom)) == 1
    assert len(re.findall(r'<g class="cell" data-status="(?:pass|fail|inconclusive)"', dom)) == 6
    assert 'data-adapter="Δ42_poetic" data-check="registers_unpack"' in dom
    assert len(re.findall(r'<svg id="register-map"', dom)) == 1
    assert len(re.findall(r'<g class="centroid">', dom)) == 4
    assert len(re.findall(r'<circle class="sample"', dom)) == 12  # 6 outputs of each of 2 adapters
    assert len(re.findall(r'<details class="check"', dom)) == 6


def test_report_command_renders_the_same_html_from_the_json(xdist_run, tmp_path: Path) -> None:
    from pytest_scenelora.cli.main import main

    _, where = xdist_run
    out = tmp_path / "again.html"
    assert main(["report", str(where / "out/results.json"), "--html", str(out), "--color", "no"]) == 0
    assert out.read_text(encoding="utf-8") == (where / "out/report.html").read_text(encoding="utf-8")


def test_colour_and_github_actions_annotations(pytester, voices, tiny_base_dir, monkeypatch) -> None:
    summary = pytester.path / "step-summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_WORKSPACE", str(pytester.path))
    monkeypatch.delenv("NO_COLOR", raising=False)
    pytester.makefile(".yaml", suite=SUITE)
    result = pytester.runpytest("--color=yes", "--adapter", str(voices), "--base-model", str(tiny_base_dir),
                                "--device", "cpu", "-k", "registers_unpack")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert ANSI.search(out)  # --color=yes on a pipe: coloured
    assert "░" not in out  # but a pipe gets no progress bar
    annotations = [line for line in out.splitlines() if line.startswith("::error ")]
    assert len(annotations) == 2, out
    assert annotations[0].startswith(
        "::error file=suite.yaml,line=8,title=scenelora registers_unpack[Δ42_logic] fail::"
        "registers_unpack[Δ42_logic]: FAIL  score ")
    assert "%0A  worst sample #" in annotations[0]
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n## scenelora coherence\n")  # appended, not overwritten
    assert re.search(r"\| \*\*Δ42_logic\*\* \| ❌ [−-]?0\.", text), text
