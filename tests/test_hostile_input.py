"""Input from files anyone can propose (adapter names, suites, model folders, environment):
each bad or crafted input is one plain line, never a traceback, a rich markup error, a
terminal escape, an exponential message or an exhausted memory.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_scenelora.cli.main import main
from pytest_scenelora.reporting.results import build_document, write_document
from pytest_scenelora.scoring.verdict import decide

ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Names that rich would read as markup (a closing tag that matches nothing, a hyperlink)
#: or that a terminal would act on (an OSC 8 hyperlink, a colour, a carriage return).
MARKUP_CHECK = "act[/y]ive"
MARKUP_ADAPTER = "Δ42_po[link=http://x]etic"
MARKUP_FILE_ADAPTER = "Δ42_po[link=mailto:x]etic[b]"  # a file name holds no '/'
ESCAPE_ADAPTER = "Δ42_lo\x1b]8;;http://x\x1b\\gic\x1b[31m\r"


def plain(text: str) -> str:
    """Output with its colour codes (SGR only) removed: what a reader sees."""
    return ANSI.sub("", text)


def record(adapter: str, name: str, scores, threshold: float = 0.03, *, baseline=None) -> dict:
    verdict = decide(name, adapter, scores, threshold, seed=0)
    return {"id": f"suite.yaml::{name}[{adapter}]", "suite": "suite.yaml", "line": 3, "name": name,
            "kind": "scene_holds", "adapter": adapter, "tolerance": 0.02, "baseline": baseline,
            "verdict": verdict.to_dict(), "adapter_info": {"content_hash": "ab" * 32, "scene": "Δ42",
                                                           "role": "poetic", "path": "/a.safetensors"}}


def results_file(path: Path, records: list[dict]) -> Path:
    write_document(path, build_document(records, settings={"base_model": "tiny", "seed": 0},
                                        created="2025-06-01T10:00:00Z"))
    return path


def assert_no_terminal_escapes(text: str) -> None:
    """Only colour codes (SGR) of our own: no hyperlink (OSC 8), no cursor movement."""
    assert "\x1b]8" not in text and "\r" not in text, repr(text)
    assert not re.search(r"\x1b(?!\[[0-9;]*m)", text), repr(text)


# --------------------------------------------------------------------- 1. plain text, in colour


def test_report_command_in_colour_prints_markup_in_names_literally(tmp_path: Path, capsys) -> None:
    path = results_file(tmp_path / "r.json", [record(MARKUP_ADAPTER, MARKUP_CHECK, [0.1, 0.12, 0.09]),
                                              record(ESCAPE_ADAPTER, MARKUP_CHECK, [0.2, 0.22, 0.19])])
    assert main(["report", str(path), "--color", "yes"]) == 0
    out = capsys.readouterr().out
    assert ANSI.search(out)  # in colour
    shown = plain(out)
    assert MARKUP_CHECK in shown and MARKUP_ADAPTER in shown
    assert "Δ42_lo\\x1b]8;;http://x\\x1b\\gic\\x1b[31m\\r" in shown  # the escapes, written out
    assert_no_terminal_escapes(out)


def test_compare_in_colour_prints_markup_in_names_literally(tmp_path: Path, capsys) -> None:
    good = np.linspace(0.28, 0.32, 12)
    base = results_file(tmp_path / "base.json", [record(MARKUP_ADAPTER, MARKUP_CHECK, good),
                                                 record(ESCAPE_ADAPTER, "[bold]x", good)])
    worse = results_file(tmp_path / "worse.json", [record(MARKUP_ADAPTER, MARKUP_CHECK, good - 0.2),
                                                   record(ESCAPE_ADAPTER, "[bold]x", good)])
    assert main(["compare", str(base), str(worse), "--color", "yes"]) == 1
    out = capsys.readouterr().out
    shown = plain(out)
    assert MARKUP_CHECK in shown and MARKUP_ADAPTER in shown and "[bold]x" in shown
    assert f"regressed: {MARKUP_ADAPTER} {MARKUP_CHECK}: 0.30 → 0.10" in shown
    assert_no_terminal_escapes(out)


def test_list_on_a_terminal_prints_adapter_metadata_literally(make_adapter, tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = tmp_path / "[link=mailto:x]voices"
    folder.mkdir()
    path = make_adapter("Δ42_po[link=mailto:x]etic[b]", directory=folder)
    with safe_open(str(path), "pt") as fh:
        metadata = {**fh.metadata(), "scene": "Δ[/y]42", "role": "po[link=http://x]etic"}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata=metadata)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws its table, in colour, as on a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["list", str(folder)]) == 0
    out = capsys.readouterr().out
    shown = plain(out)
    assert ANSI.search(out) and "┃" in out  # rich's table, in colour
    for text in ("Δ42_po[link=mailto:x]etic[b]", "Δ[/y]42", "po[link=http://x]etic", "[link=mailto:x]voices"):
        assert text in shown, shown
    assert "\x1b]8" not in out


SUITE_WITH_MARKUP_NAME = """\
scorer: char-ngram
checks:
  - kind: adapter_active
    name: "act[/y]ive"
    probes: 2
    threshold: 0.0
"""


def test_a_session_in_colour_prints_a_markup_check_name_literally(pytester, make_adapter, tiny_base_dir,
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "voices"
    folder.mkdir()
    make_adapter(MARKUP_FILE_ADAPTER, directory=folder)
    pytester.makefile(".yaml", suite=SUITE_WITH_MARKUP_NAME)
    result = pytester.runpytest("--color", "yes", "-p", "no:cacheprovider", "--adapter", str(folder),
                                "--base-model", str(tiny_base_dir), "--device", "cpu")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "MarkupError" not in out and "INTERNALERROR" not in out and "Traceback" not in out
    section = plain(out)[plain(out).index("scenelora coherence"):]
    assert MARKUP_CHECK in section and MARKUP_FILE_ADAPTER in section, section
    assert "\x1b]8" not in out


def test_progress_line_writes_control_characters_out() -> None:
    from pytest_scenelora.engine.progress import progress_line

    line = progress_line(f"generating 4 samples ({ESCAPE_ADAPTER})", 1, 4, width=200)
    assert "\x1b" not in line and "\r" not in line
    assert "\\x1b]8;;http://x" in line


def test_html_escapes_every_name() -> None:
    from pytest_scenelora.reporting.html import render_html

    hostile = '"><script>alert(1)</script>'
    records = [record(f"Δ42_{hostile}", hostile, [0.1, 0.2, 0.15],
                      baseline={"change": "regressed", "delta": -0.1, "line": hostile})]
    records[0]["verdict"]["detail"] = {"sample_texts": [hostile] * 3, hostile: hostile}
    page = render_html(build_document(records, settings={"base_model": "tiny", "seed": 0}))
    assert "<script>" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------------------------ 2. suite files

BAD_NUMBERS = {
    "nan_threshold": ("checks:\n  - kind: scene_holds\n    threshold: .nan\n", 3,
                      "check 'scene_holds' 'threshold' is nan, not a finite number; write e.g. `threshold: 0.1`"),
    "nan_tolerance": ("checks:\n  - kind: registers_unpack\n    tolerance: .NaN\n", 3,
                      "check 'registers_unpack' 'tolerance' is nan, not a finite number; "
                      "write e.g. `tolerance: 0.02`"),
    "nan_weight": ("checks:\n  - kind: merge_equivalence\n    weight: .nan\n", 3,
                   "check 'merge_equivalence' 'weight' is nan, not a finite number; write e.g. `weight: 1.0`"),
    "inf_weight": ("checks:\n  - kind: merge_equivalence\n    weight: -.inf\n", 3,
                   "check 'merge_equivalence' 'weight' is -inf, not a finite number; write e.g. `weight: 1.0`"),
    "nan_temperature": ("generation:\n  temperature: .nan\nchecks:\n  - kind: scene_holds\n", 2,
                        "'generation' 'temperature' is nan, not a finite number; write e.g. `temperature: 0.8`"),
    "nan_top_p": ("generation:\n  max_new_tokens: 8\n  top_p: .nan\nchecks:\n  - kind: scene_holds\n", 3,
                  "'generation' 'top_p' is nan, not a finite number; write e.g. `top_p: 0.95`"),
}


def run_bad_suite(pytester, text: str, name: str = "suite"):
    path = pytester.makefile(".yaml", **{name: text})
    started = time.perf_counter()
    result = pytester.runpytest("-p", "no:cacheprovider")
    return path, result, time.perf_counter() - started


@pytest.mark.parametrize("name", sorted(BAD_NUMBERS))
def test_non_finite_numbers_in_a_suite_are_one_line_errors(pytester, name: str) -> None:
    text, line, words = BAD_NUMBERS[name]
    path, result, _ = run_bad_suite(pytester, text, name)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"{path}:{line}: {words}" in out, out
    assert "Traceback" not in out and "INTERNALERROR" not in out


def alias_chain(levels: int) -> str:
    """A flow list whose items are anchored lists, each nine aliases of the one before."""
    items = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


def test_an_alias_chain_is_quoted_as_a_short_excerpt(pytester) -> None:
    path, result, _ = run_bad_suite(pytester, f"checks:\n  - kind: scene_holds\n    threshold: {alias_chain(3)}\n")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    [line] = [line for line in out.splitlines() if line.startswith(f"{path}:3:")]
    assert line.startswith(f"{path}:3: check 'scene_holds' 'threshold' must be a number, not [['lol', "), line
    assert line.endswith("write `threshold: 0.1`") and len(line) < len(str(path)) + 200, line
    assert len(out) < 5000


def test_a_billion_laughs_is_refused_quickly_with_a_short_line(pytester) -> None:
    # six levels (531,441 values) are past the limit yet stay harmless where it fails: its
    # message would be megabytes, where nine levels would be gigabytes
    path, result, seconds = run_bad_suite(pytester, "suite: laughs\nchecks:\n  - kind: scene_holds\n"
                                          f"    threshold: {alias_chain(6)}\n")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert (f"{path}:4: this value stands for more than 200,000 values once its aliases (*name) are "
            "expanded; write the values out, or repeat fewer aliases") in out, out
    assert len(out) < 5000 and seconds < 30


def test_deeply_nested_yaml_is_a_one_line_error(pytester) -> None:
    path, result, _ = run_bad_suite(pytester, "checks:\n  - kind: scene_holds\n    threshold: "
                                    + "[" * 5000 + "]" * 5000 + "\n")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"{path}: values are nested too deeply to read; write a flatter file" in out, out
    assert "RecursionError" not in out


# --------------------------------------------------------------------- 3. safetensors folders only


def pickle_folder(where: Path, tiny_base_dir: Path) -> Path:
    """A model folder whose weights exist only as a pickle (never unpickled by the test)."""
    where.mkdir()
    (where / "config.json").write_text((tiny_base_dir / "config.json").read_text("utf-8"), "utf-8")
    (where / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return where


def test_a_merged_model_holding_only_a_pickle_is_refused_in_one_line(pytester, make_adapter, tiny_base_dir,
                                                                      tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    make_adapter("Δ42_poetic", directory=voices)
    merged = pickle_folder(tmp_path / "merged", tiny_base_dir)
    suite = pytester.makefile(".yaml", suite=f"checks:\n  - kind: merge_equivalence\n    probes: 1\n"
                                             f"    merged_model: {merged}\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--adapter", str(voices),
                                "--base-model", str(tiny_base_dir), "--device", "cpu")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert (f"{suite}:4: check 'merge_equivalence': {merged / 'pytorch_model.bin'}: merged_model weights in "
            "a pickle format, which runs code when loaded and is never read here; save them as "
            "safetensors (save_pretrained(safe_serialization=True))") in out, out
    assert "Traceback" not in out


def test_an_embedder_folder_holding_only_a_pickle_is_refused_in_one_line(tiny_base_dir, tmp_path: Path) -> None:
    from pytest_scenelora.errors import ScorerError
    from pytest_scenelora.scoring.embedders import make_scorer

    folder = pickle_folder(tmp_path / "embedder", tiny_base_dir)
    scorer = make_scorer("embedding", folder)
    with pytest.raises(ScorerError) as caught:
        scorer.embed(["a text"])
    assert str(caught.value) == (f"{folder / 'pytorch_model.bin'}: embedder weights in a pickle format, "
                                 "which runs code when loaded and is never read here; save them as "
                                 "safetensors (save_pretrained(safe_serialization=True))")


def test_a_model_folder_naming_its_own_code_is_refused(tmp_path: Path) -> None:
    from pytest_scenelora.engine.weights import read_config
    from pytest_scenelora.errors import ScorerError

    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "evil.Model"}}), "utf-8")
    with pytest.raises(ScorerError, match=r"config\.json: names its own Python code \(auto_map\)"):
        read_config(tmp_path, "embedder", ScorerError)


# --------------------------------------------------------------------- 4. environment and CLI numbers


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "99999999999999999999"])
def test_a_bad_thread_count_in_the_environment_names_the_variable(monkeypatch, value: str) -> None:
    from pytest_scenelora.engine.threads import cpu_threads, encoder_threads
    from pytest_scenelora.errors import UsageError

    monkeypatch.setenv("SCENELORA_CPU_THREADS", value)
    for ask in (lambda: cpu_threads(None), encoder_threads):
        with pytest.raises(UsageError) as caught:
            ask()
        assert str(caught.value) == (f"SCENELORA_CPU_THREADS={value!r} is not a thread count; set it to a "
                                     "whole number from 1 to 1024, or unset it to let scenelora choose")


def test_a_bad_thread_count_fails_the_checks_in_one_line(pytester, make_adapter, tiny_base_dir,
                                                         tmp_path: Path, monkeypatch) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    make_adapter("Δ42_poetic", directory=voices)
    pytester.makefile(".yaml", suite="scorer: char-ngram\nchecks:\n  - kind: adapter_active\n    probes: 2\n")
    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))  # no cached logits: the model runs
    monkeypatch.setenv("SCENELORA_CPU_THREADS", "abc")
    result = pytester.runpytest("-p", "no:cacheprovider", "--adapter", str(voices),
                                "--base-model", str(tiny_base_dir), "--device", "cpu")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "SCENELORA_CPU_THREADS='abc' is not a thread count" in out
    assert "Traceback" not in out and "INTERNALERROR" not in out and "ValueError" not in out


CLI_NUMBERS = [
    (["compare", "a.json", "b.json", "--seed", "-1"], "argument --seed: '-1' is negative; seeds are 0 to 4294967295"),
    (["compare", "a.json", "b.json", "--seed=99999999999999999999"],
     "argument --seed: '99999999999999999999' is too large; seeds are 0 to 4294967295"),
    (["compare", "a.json", "b.json", "--seed", "x"], "argument --seed: 'x' is not an integer"),
    (["train", "--out", "o", "--all", "--seed", "-2"], "argument --seed: '-2' is negative; seeds are 0 to 4294967295"),
    (["train", "--out", "o", "--all", "--alpha", "inf"], "argument --alpha: 'inf' is not a finite number"),
    (["train", "--out", "o", "--all", "--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["train", "--out", "o", "--all", "--dropout", "nan"], "argument --dropout: 'nan' is not a finite number"),
    (["train", "--out", "o", "--all", "--r", "100000"], "argument --r: '100000' must be 1 to 4096"),
    (["train", "--out", "o", "--all", "--threads", "99999999999"],
     "argument --threads: '99999999999' must be 1 to 1024"),
    (["train", "--out", "o", "--all", "--steps", "0"], "argument --steps: '0' must be 1 or more"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_NUMBERS, ids=[" ".join(a[3:] if a[0] == "compare" else a[4:])
                                                               for a, _ in CLI_NUMBERS])
def test_cli_numbers_are_one_line_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"scenelora {argv[0]}: error: {message}", err
    assert "Traceback" not in err


def test_a_seed_beyond_what_torch_takes_is_a_usage_error(pytester) -> None:
    pytester.makepyfile(test_nothing="def test_x():\n    pass\n")
    result = pytester.runpytest("--scenelora-seed", str(2**70))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*'{2**70}' is too large; seeds are 0 to 4294967295*"])


# --------------------------------------------------------------------- 5. prompts cut to the context


def test_a_huge_scene_core_is_cut_to_the_context_and_generation_returns(tiny_base) -> None:
    from pytest_scenelora.engine.generation import GenerationConfig, max_positions
    from pytest_scenelora.engine.library import AdapterLibrary
    from pytest_scenelora.prompts import scene_prompt

    library = AdapterLibrary(tiny_base)
    limit = max_positions(tiny_base.model)
    assert limit is not None
    widest: list[int] = []

    def at_most_the_context(module, args, kwargs) -> None:
        # before attention is computed: a prompt past the context would ask it for
        # memory quadratic in the prompt's length, so stop here instead
        width = kwargs["attention_mask"].shape[1]
        widest.append(width)
        assert width <= limit, f"the model was given {width} positions; it has {limit}"

    tiny_base.model.register_forward_pre_hook(at_most_the_context, with_kwargs=True)
    core = " ".join(["harbour", "silence", "Δ42"] * 34_000)  # 102,000 words
    prompt = scene_prompt("Δ42", core, "fragment")
    config = GenerationConfig(max_new_tokens=6)
    texts = library.generate([prompt, "Scene: Δ42\n"], None, config=config)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert max(widest) <= limit and widest[0] == limit - config.max_new_tokens
    logits = library.logits([prompt], None)
    assert logits.shape[0] == 1 and widest[-1] == limit
