"""The baseline gate in real sessions: update it under ``-n 2`` without losing anything,
then fail a sabotaged adapter on its regression while a retrained one passes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """\
scorer: char-ngram
generation:
  max_new_tokens: 8
checks:
  - kind: adapter_active
    probes: 6
    threshold: 0.0001
  - kind: scene_holds
    samples: 4
    threshold: -1.0
"""


def sabotage(path: Path, factor: float) -> None:
    """Scale an adapter's B factors: the same adapter, made weaker (a bad merge, say)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) * (factor if "lora_B" in k else 1.0) for k in fh.keys()}  # noqa: SIM118
    path.unlink()
    save_file(tensors, str(path), metadata=metadata)


@pytest.fixture(scope="module")
def project(make_adapter, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("gate")
    (where / "voices").mkdir()
    make_adapter("Δ42_poetic", seed=11, directory=where / "voices")
    make_adapter("Δ42_logic", seed=12, directory=where / "voices")
    (where / "suite.yaml").write_text(SUITE, encoding="utf-8")
    (where / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    return where


def run(project: Path, tiny_base_dir: Path, *args: str, adapters: str = "voices") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "suite.yaml", "--adapter", adapters,
         "--base-model", str(tiny_base_dir), "--device", "cpu", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def baseline(project: Path, tiny_base_dir: Path) -> Path:
    """The baseline, written twice under ``-n 2``: the second write must equal the first."""
    path = project / "baselines" / "main.json"
    first = run(project, tiny_base_dir, "-n", "2", "--scenelora-baseline", str(path),
                "--scenelora-update-baseline")
    assert first.returncode == 0, first.stdout[-3000:]
    assert f"scenelora: baseline {path} updated: 4 checks from this run, 4 in all" in first.stdout
    stored = json.loads(path.read_text(encoding="utf-8"))
    second = run(project, tiny_base_dir, "-n", "2", "--scenelora-baseline", str(path),
                 "--scenelora-update-baseline")
    assert second.returncode == 0, second.stdout[-3000:]
    again = json.loads(path.read_text(encoding="utf-8"))
    return path, stored, again


def test_updating_under_xdist_twice_loses_nothing(baseline) -> None:
    path, first, second = baseline
    assert [r["id"] for r in first["results"]] == [r["id"] for r in second["results"]]
    assert len(first["results"]) == 4
    assert [r["verdict"]["samples"] for r in first["results"]] == [r["verdict"]["samples"] for r in second["results"]]
    assert set(first["adapters"]) == {"Δ42_logic", "Δ42_poetic"}
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_sabotaged_adapter_regresses_and_a_retrained_one_does_not(baseline, project, make_adapter,
                                                                      tiny_base_dir, tmp_path) -> None:
    path, *_ = baseline
    candidate = tmp_path / "voices"
    candidate.mkdir()
    shutil.copy(project / "voices" / "Δ42_poetic.safetensors", candidate)
    sabotage(candidate / "Δ42_poetic.safetensors", 0.01)
    make_adapter("Δ42_logic", seed=12, directory=candidate)  # retrained: same recipe, same seed
    result = run(project, tiny_base_dir, "-q", "--scenelora-baseline", str(path),
                 "--scenelora-json", str(tmp_path / "candidate.json"), adapters=str(candidate))
    out = result.stdout
    assert result.returncode == 1, out
    assert re.search(r"suite\.yaml:5: Δ42_poetic adapter_active: \d+\.\d+ → \d+\.\d+ \(−\d+\.\d+, 95% CI "
                     r"−\d+\.\d+\.\.−\d+\.\d+\), baseline of \d{4}-\d\d-\d\d", out), out
    # the sabotaged adapter regresses on the check built to catch it; the retrained one
    # regresses on nothing. (Scaled by 0.01 the poetic voice is nearly the base, so its
    # scene margin may drop too: whether significantly depends on this machine's voices.)
    failed = set(re.findall(r"FAILED suite\.yaml::(\w+\[Δ42_\w+\])", out))
    assert "adapter_active[Δ42_poetic]" in failed, out
    assert failed <= {"adapter_active[Δ42_poetic]", "scene_holds[Δ42_poetic]"}, out
    assert re.search(rf"{len(failed)} failed, {4 - len(failed)} passed", out), out
    # -q keeps the coherence report to its summary line
    assert "scenelora: 4 checks on 2 adapters: 4 passed, 0 failed, 0 inconclusive; against the baseline of " \
           in out and f": {len(failed)} regressed, 0 improved" in out
    assert "scenelora coherence" not in out

    from pytest_scenelora.cli.main import main

    assert main(["compare", str(path), str(tmp_path / "candidate.json"), "--color", "no"]) == 1
    assert main(["compare", str(path), str(path), "--color", "no"]) == 0


def test_a_malformed_baseline_is_a_usage_error_naming_the_file(pytester, tmp_path) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    bad = tmp_path / "baseline.json"
    bad.write_text('{"format": "scenelora-results", "version": 1, "results": [', encoding="utf-8")
    result = pytester.runpytest("--scenelora-baseline", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"{bad}: the baseline is not valid JSON (line 1, column" in err and "Traceback" not in err
    missing = pytester.runpytest("--scenelora-update-baseline")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*--scenelora-update-baseline needs --scenelora-baseline FILE*"])
    assert pytester.runpytest("--scenelora-baseline", str(tmp_path / "none.json")).ret == pytest.ExitCode.USAGE_ERROR
