"""The pull-request gate (``scenelora gate``) against real Git repositories.

One repository per module: ``main`` holds a suite, two adapters and a committed baseline
measured on them; ``bare`` is ``main`` before the baseline was committed. Each test makes a
pull-request branch and runs the gate on it with the tiny base. What a pull request can
change (its suites, thresholds, tolerances, globs, links) must not change the verdict.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from pytest_scenelora.cli.gate import GateOptions, run_gate
from pytest_scenelora.cli.pr_changes import changed_adapters, commit_of
from pytest_scenelora.reporting.baseline import Change, compare_record, record_tolerance
from pytest_scenelora.reporting.github import escape_log, escape_markdown, step_summary

SUITE = """\
scorer: char-ngram
adapters: "Δ42_*"
generation:
  max_new_tokens: 8
checks:
  - kind: adapter_active
    probes: 6
    threshold: 0.0001
"""

#: The same suite as a pull request would loosen it, one way at a time.
WEAKENED = {
    "tolerance": SUITE + "    tolerance: 100\n",
    "threshold": SUITE.replace("threshold: 0.0001", "threshold: 0"),
    "glob": SUITE.replace('adapters: "Δ42_*"', 'adapters: "nothing-matches-*"'),
}

POETIC = "adapters/Δ42_poetic.safetensors"
LOGIC = "adapters/Δ42_logic.safetensors"


def scaled(path: Path, factor: float, dest: Path) -> bytes:
    """The adapter at *path* with its B factors scaled: the same adapter, weaker (a bad merge)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) * (factor if "lora_B" in k else 1.0) for k in fh.keys()}  # noqa: SIM118
    save_file(tensors, str(dest), metadata=metadata)
    return dest.read_bytes()


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def commit(repo: Path, branch: str, start: str, files: Mapping[str, bytes | str | tuple[str, str] | None]) -> str:
    """A branch *branch* from *start* with *files* written (bytes or text), linked
    (``("link", target)``) or deleted (None); returns the branch name."""
    git(repo, "checkout", "-q", "-B", branch, start)
    for name, content in files.items():
        path = repo / name
        if path.is_symlink() or path.exists():
            path.unlink()
        if content is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            path.symlink_to(content[1])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", branch)
    return branch


@pytest.fixture(scope="module")
def voices(make_adapter, tmp_path_factory) -> dict[str, bytes]:
    """The adapters' bytes: poetic as trained, poetic silenced (B = 0), logic weakened and as trained."""
    where = tmp_path_factory.mktemp("voices")
    poetic = make_adapter("Δ42_poetic", seed=11, directory=where)
    logic = make_adapter("Δ42_logic", seed=12, directory=where)
    return {"poetic": poetic.read_bytes(), "silenced": scaled(poetic, 0.0, where / "silenced.safetensors"),
            "logic": logic.read_bytes(), "weak logic": scaled(logic, 0.01, where / "weak.safetensors")}


def tiny_args(tiny_base_dir: Path) -> list[str]:
    return ["--base-model", str(tiny_base_dir), "--device", "cpu"]


@pytest.fixture(scope="module")
def repo(voices, tiny_base_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo") / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for name, content in {"pytest.ini": "[pytest]\n", "suites/voice.yaml": SUITE,
                          POETIC: voices["poetic"], LOGIC: voices["weak logic"]}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "suite and voices")
    git(root, "branch", "bare")
    measured = subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider", "--adapter", "adapters",
         "--scenelora-baseline", "scenelora-baseline.json", "--scenelora-update-baseline",
         *tiny_args(tiny_base_dir)],
        cwd=root, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert measured.returncode == 0, measured.stdout[-3000:]
    git(root, "add", "scenelora-baseline.json")
    git(root, "commit", "-q", "-m", "baseline")
    return root


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "PYTEST_ADDOPTS")}


@pytest.fixture
def gate(repo, tiny_base_dir, tmp_path, monkeypatch):
    """Run the gate on a branch of the module's repository: (exit code, output, result)."""
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)

    def run(head: str, *, base: str = "main", environ: Mapping[str, str] | None = None):
        out = io.StringIO()
        result = run_gate(GateOptions(repo=repo, base=base, head=head, out=tmp_path / "gate",
                                      pytest_args=tiny_args(tiny_base_dir)),
                          out=out, environ=environ or {})
        return result.code, out.getvalue(), result

    return run


# ------------------------------------------------------------------ what the gate decides


@pytest.mark.parametrize("weakening", sorted(WEAKENED))
def test_a_pull_request_that_weakens_the_suite_still_fails(repo, voices, gate, weakening, tmp_path) -> None:
    head = commit(repo, f"weaken-{weakening}", "main",
                  {"suites/voice.yaml": WEAKENED[weakening], POETIC: voices["silenced"]})
    summary = tmp_path / "summary.md"
    code, out, result = gate(head, environ={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 1, out
    assert result.tested == ["Δ42_poetic"]
    assert any("the suites of main failed on the pull request's adapters" in f for f in result.failures), out
    assert "Δ42_poetic adapter_active: " in out and "baseline of " in out  # the regression line
    # after the fenced pytest output: the annotation on the target's suite line, the gate's error
    commands = [line for line in out.splitlines() if line.startswith("::")]
    assert commands[2].startswith("::error file=suites/voice.yaml,line=6,title=scenelora "
                                  "adapter_active[Δ42_poetic] "), commands
    assert commands[3].startswith("::error title=scenelora gate::the suites of main failed"), commands
    assert summary.read_text(encoding="utf-8").startswith("## ❌ the adapter gate failed\n")


def test_a_suite_cannot_widen_its_own_tolerance_against_a_baseline(repo, voices, tiny_base_dir) -> None:
    """Outside the gate too (pytest on a branch's own suite, against the target's baseline),
    ``tolerance: 100`` and ``threshold: 0`` in the candidate's suite do not hide the drop:
    the baseline's stricter tolerance decides."""
    loose = WEAKENED["tolerance"].replace("threshold: 0.0001", "threshold: 0")
    commit(repo, "weaken-alone", "main", {"suites/voice.yaml": loose, POETIC: voices["silenced"]})
    alone = subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider", "--adapter", POETIC,
         "--scenelora-baseline", "scenelora-baseline.json", *tiny_args(tiny_base_dir)],
        cwd=repo, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 1, alone.stdout[-3000:]
    assert "1 passed, 0 failed, 0 inconclusive; against the baseline of " in alone.stdout  # threshold 0
    assert ": 1 regressed, 0 improved" in alone.stdout


def test_a_symlink_swap_is_refused_in_one_line(repo, gate) -> None:
    head = commit(repo, "swap", "main", {POETIC: ("link", "Δ42_logic.safetensors")})
    code, out, result = gate(head)
    assert code == 1
    assert result.failures == [f"{POETIC}: is a symbolic link in the pull request; the gate tests adapter "
                               "files, never what a link points at: commit the file itself"]
    assert "Traceback" not in out and "test session starts" not in out  # refused before any run


def test_a_genuine_improvement_passes(repo, voices, gate) -> None:
    head = commit(repo, "retrain-logic", "main", {LOGIC: voices["logic"]})
    code, out, result = gate(head)
    assert code == 0, out
    assert result.tested == ["Δ42_logic"] and result.failures == []
    assert "scenelora gate: passed: 1 adapter tested" in out


def test_a_changed_adapter_that_no_suite_tests_fails(repo, voices, gate) -> None:
    head = commit(repo, "unmatched", "main", {"adapters/Other_voice.safetensors": voices["poetic"]})
    code, out, result = gate(head)
    assert code == 1, out
    assert result.failures == ["adapters/Other_voice.safetensors: changed, but no suite of main tested it "
                               "(no suite's adapters: glob matches 'Other_voice', or it did not load)"]


def test_without_a_committed_baseline_the_target_versions_are_measured(repo, voices, gate) -> None:
    head = commit(repo, "silence-on-bare", "bare", {POETIC: voices["silenced"]})
    code, out, _ = gate(head, base="bare")
    assert code == 1, out
    assert "bare has no scenelora-baseline.json: measuring its versions of the changed adapters" in out
    assert "Δ42_poetic adapter_active: " in out and "baseline of " in out


def test_no_adapter_changed_passes_without_running_anything(repo, gate) -> None:
    head = commit(repo, "docs", "main", {"README.md": "docs\n", "suites/voice.yaml": WEAKENED["glob"]})
    code, out, result = gate(head)
    assert code == 0 and result.tested == []
    assert "no adapter changed under adapters/: nothing to gate" in out


# ------------------------------------------------------------------ hostile names


def test_a_hostile_file_name_cannot_issue_a_workflow_command(repo, voices, gate, tmp_path) -> None:
    evil = "adapters/Δ42_x\n::error::pwned.safetensors"
    head = commit(repo, "evil-name", "main", {evil: voices["poetic"]})
    code, out, result = gate(head)
    assert code == 0, out
    assert result.tested == ["Δ42_x\n::error::pwned"]
    assert not [line for line in out.splitlines() if line.lstrip().startswith("::")], out
    assert "scenelora: adapters Δ42_x\\n:\\x3aerror:\\x3apwned" in out  # the pytest header, escaped
    assert "scenelora gate: testing adapters/Δ42_x\\n:\\x3aerror:\\x3apwned.safetensors" in out

    summary = tmp_path / "summary.md"
    code, out, _ = gate(head, environ={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 0, out
    commands = [line for line in out.splitlines() if line.lstrip().startswith("::")]
    token = commands[0].removeprefix("::stop-commands::")
    assert len(token) == 32 and commands == [f"::stop-commands::{token}", f"::{token}::"], commands
    text = summary.read_text(encoding="utf-8")
    assert "\n::error" not in text and "<code>adapters/Δ42_x\\\\n::error::pwned.safetensors</code>" in text


# ------------------------------------------------------------------ pure parts


def test_type_changes_and_folder_links_are_seen(repo, voices) -> None:
    head = commit(repo, "peft-link", "main", {
        "adapters/voice/adapter_config.json": "{}",
        "adapters/voice/adapter_model.safetensors": ("link", "../Δ42_poetic.safetensors"),
        POETIC: ("link", "Δ42_logic.safetensors")})
    plan = changed_adapters(repo, commit_of(repo, "main"), commit_of(repo, head), "adapters")
    assert sorted(plan.refused) == sorted([
        f"{POETIC}: is a symbolic link in the pull request; the gate tests adapter files, never what a "
        "link points at: commit the file itself",
        "adapters/voice/adapter_model.safetensors: is a symbolic link in the pull request; the gate tests "
        "adapter files, never what a link points at: commit the file itself",
    ])
    assert [a.path for a in plan.adapters] == ["adapters/voice"]


def test_the_stricter_tolerance_decides() -> None:
    from pytest_scenelora.scoring.verdict import decide

    def rec(scores: list[float], tolerance: float | None) -> dict:
        verdict = decide("registers_unpack", "Δ42_poetic", scores, 0.5, seed=0)
        return {"id": "s.yaml::r[Δ42_poetic]", "name": "registers_unpack", "adapter": "Δ42_poetic",
                "tolerance": tolerance, "verdict": verdict.to_dict()}

    before = [0.9, 0.8, 0.85, 0.95, 0.9, 0.88, 0.92, 0.87]
    after = [s - 0.3 for s in before]
    assert compare_record(rec(before, 0.05), rec(after, 100.0)).change is Change.REGRESSED
    assert compare_record(rec(before, 0.05), rec(after, float("nan"))).change is Change.REGRESSED
    assert record_tolerance(rec(before, float("nan")), rec(after, None)) == 0.0
    assert record_tolerance(rec(before, 0.5), rec(after, 0.01), None) == 0.01


@pytest.mark.parametrize(("name", "logged"), [
    ("Δ42_poetic", "Δ42_poetic"),
    ("a\n::error::b", "a\\n:\\x3aerror:\\x3ab"),
    ("::warning file=x::y", ":\\x3awarning file=x:\\x3ay"),
    ("##[error]x", "#\\x23[error]x"),
    ("a\x1b[31mred\u202e", "a\\x1b[31mred\\u202e"),
    ("not utf-8 \udcff", "not utf-8 \\udcff"),
])
def test_escape_log_keeps_a_name_on_its_line_and_out_of_commands(name: str, logged: str) -> None:
    assert escape_log(name) == logged
    assert "::" not in escape_log(name) and "\n" not in escape_log(name)


def test_markdown_escaping_leaves_no_html_links_or_cells() -> None:
    assert escape_markdown("Δ42_poetic") == "Δ42_poetic"
    assert escape_markdown("<img src=x>|![a](http://e/x.png) @me *b* _i_") == \
        "\\<img src=x\\>\\|!\\[a\\](http://e/x.png) \\@me \\*b\\* \\_i\\_"
    from pytest_scenelora.scoring.verdict import decide

    verdict = decide("registers_unpack", "<img src=x>|a\nb", [0.0, 0.0], 0.5, seed=0)
    record = {"id": "s.yaml::r[x]", "suite": "s.yaml", "line": 3, "name": "registers_unpack",
              "adapter": "<img src=x>|a\nb", "verdict": verdict.to_dict()}
    text = step_summary([record])
    assert not re.search(r"(?<!\\)<img", text) and "| **\\<img src=x\\>\\|a\\\\nb** |" in text
    assert "- <code>s.yaml::r\\[x\\]</code> (s.yaml:3): FAIL" in text


def test_the_gate_command_is_registered(repo, capsys, tmp_path) -> None:
    from pytest_scenelora.cli.main import main

    head = commit(repo, "readme", "main", {"README.md": "more docs\n"})
    assert main(["gate", "--repo", str(repo), "--base", "main", "--head", head, "--out", str(tmp_path),
                 "--", "--device", "cpu"]) == 0
    assert "scenelora gate: no adapter changed under adapters/: nothing to gate" in capsys.readouterr().out
    assert main(["gate", "--repo", str(repo), "--base", "no-such-branch", "--head", "main"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scenelora: error: 'no-such-branch' names no commit in ") and err.count("\n") == 1
