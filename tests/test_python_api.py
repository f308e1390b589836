"""The README's Python API example, ``examples/test_voices.py``, run as it is.

It runs on the tiny base against two random voices and one that is all zeros: every test
passes on the voices, and the zero adapter fails exactly the test that asks whether a voice
changes what the base says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "test_voices.py"


def zeroed(source: Path, target: Path) -> Path:
    """*source* with its LoRA B factors zeroed: a file that loads, and changes nothing."""
    from pytest_scenelora.engine.adapters import load_tensors, read_adapter, save_adapter_file

    info = read_adapter(source)
    tensors = {k: v * 0 if "lora_B" in k else v for k, v in load_tensors(info).items()}
    return save_adapter_file(target, tensors, info.peft_config, scene="Δ42", role="silence",
                             base_model="tiny", base_fingerprint=info.metadata["base_fingerprint"])


def test_the_readme_points_at_the_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API\n", 1)[1].split("\n## ", 1)[0]
    assert "examples/test_voices.py" in section
    for name in ("scenelora_base", "adapter_library", "adapter", "train_adapter", "switch", "combine",
                 "merged", "strategies.scenes"):
        assert name in section, name


def test_the_example_passes_on_voices_and_fails_a_zero_adapter(pytester: pytest.Pytester, make_adapter,
                                                                 tiny_base_dir: Path, tmp_path: Path) -> None:
    pytester.makepyfile(test_voices=EXAMPLE.read_text(encoding="utf-8"))
    voices = tmp_path / "voices"
    voices.mkdir()
    make_adapter("Δ42_poetic", seed=31, directory=voices)
    logic = make_adapter("Δ42_logic", seed=32, directory=voices)
    zeroed(logic, voices / "Δ42_silence.safetensors")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA", f"--adapter={voices}",
                                "--base-model", str(tiny_base_dir), "--device", "cpu")
    # per adapter (3): voice changes, combination, merge, seeds, unseen scenes; once: one base,
    # mixed batch, training
    result.assert_outcomes(passed=3 * 5 + 3 - 1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: Δ42_silence leaves the base's logits as they are",
                                 "FAILED test_voices.py::test_the_voice_changes_what_the_base_says[[]Δ42_silence[]]*"])
