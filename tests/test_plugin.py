"""The plugin driven from outside, as users run it: options, fixtures, errors, node ids."""

from __future__ import annotations

from pathlib import Path

import pytest

USES_ADAPTER = """
def test_speaks(adapter, scenelora_base):
    texts = adapter.generate(["Topic: the harbour\\n"])
    assert texts[0].strip()
    assert adapter.name.startswith("Δ42_") or adapter.name.startswith("сцена")
"""


@pytest.fixture
def adapters_dir(make_adapter, tmp_path: Path) -> Path:
    folder = tmp_path / "my adapters"
    folder.mkdir()
    make_adapter("Δ42_poetic", seed=1, directory=folder)
    make_adapter("сцена 7_тело", seed=2, directory=folder)
    return folder


def test_adapter_fixture_runs_once_per_adapter_with_unicode_ids(pytester, adapters_dir, tiny_base_dir):
    pytester.makepyfile(test_voices=USES_ADAPTER)
    result = pytester.runpytest("-v", "--adapter", str(adapters_dir), "--base-model", str(tiny_base_dir))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*scenelora: base *, device auto, quantize none, seed 0*",
        "*scenelora: adapters Δ42_poetic, сцена 7_тело*",
    ])
    result.stdout.fnmatch_lines([
        "*test_voices.py::test_speaks[[]Δ42_poetic[]] PASSED*",
        "*test_voices.py::test_speaks[[]сцена 7_тело[]] PASSED*",
    ])
    assert "\\u0394" not in result.stdout.str()
    by_keyword = pytester.runpytest("--adapter", str(adapters_dir), "--base-model", str(tiny_base_dir),
                                    "-k", "тело")
    by_keyword.assert_outcomes(passed=1, deselected=1)


def test_adapters_and_base_can_come_from_the_ini_file(pytester, adapters_dir, tiny_base_dir):
    pytester.makepyfile(test_voices=USES_ADAPTER)
    pytester.makeini(f"""
        [pytest]
        scenelora_adapters = {adapters_dir}/Δ42_poetic.safetensors
        scenelora_base_model = {tiny_base_dir}
        scenelora_device = cpu
    """)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*scenelora: base *, device cpu,*"])


def test_without_adapters_the_fixture_skips_with_a_reason(pytester) -> None:
    pytester.makepyfile(test_voices=USES_ADAPTER)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs --adapter PATH*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adapter", "nowhere/Δ42_poetic.safetensors"],
         "*nowhere/Δ42_poetic.safetensors: no such adapter*"),
        (["--adapter", "nowhere/*.safetensors"], "*the glob matches no adapter file*"),
        (["--device", "tpu"], "*'tpu' is not a device; use auto|cpu|cuda*"),
        (["--quantize", "3bit"], "*'3bit' is not a quantization; use none|8bit|4bit*"),
        (["--scenelora-seed", "-1"], "*'-1' is negative*"),
    ],
)
def test_bad_options_are_usage_errors(pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_nothing="def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_help_lists_every_option_and_ini_key(pytester) -> None:
    # argparse %-formats option help: an unescaped "95%" made `pytest --help` a traceback
    result = pytester.runpytest("--help")
    assert result.ret == 0
    text = result.stdout.str()
    assert "at its own 95%), holm" in text
    from pytest_scenelora.plugin import _OPTIONS

    for flag, ini, *_ in _OPTIONS:
        assert flag in text and f"  {ini} (string):" in text, flag


def test_a_bad_ini_value_names_the_setting(pytester) -> None:
    pytester.makepyfile(test_nothing="def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nscenelora_quantize = 2bit\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*scenelora_quantize: '2bit' is not a quantization*"])


def test_an_adapter_that_does_not_fit_fails_in_one_line(pytester, make_adapter, tiny_base_dir, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from pytest_scenelora.engine.adapters import read_adapter

    path = make_adapter("Δ42_poetic", seed=4, directory=tmp_path)
    info = read_adapter(path)
    state = load_file(str(path))
    state.pop(sorted(state)[0])
    save_file(state, str(path), metadata={**info.metadata, "peft_config": json.dumps(info.peft_config)})
    pytester.makepyfile(test_voices=USES_ADAPTER)
    result = pytester.runpytest("--adapter", str(path), "--base-model", str(tiny_base_dir))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{path}: 1 tensor(s) missing for its LoRA config*"])
    assert "Traceback" not in result.stdout.str()


def test_a_missing_base_fails_in_one_line(pytester, adapters_dir) -> None:
    pytester.makepyfile(test_voices=USES_ADAPTER)
    result = pytester.runpytest("--adapter", str(adapters_dir), "--base-model", "/no/such/base")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*base model '/no/such/base' not found: looked for /no/such/base*"])
