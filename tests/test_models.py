"""Base models: offline resolution, presets, fingerprints, devices and quantization."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_scenelora.engine import bases as models
from pytest_scenelora.errors import BaseModelError, BaseModelNotFoundError


def scenelora(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_scenelora.cli.main", *args],
                          capture_output=True, text=True)


def test_a_missing_local_path_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(BaseModelNotFoundError) as info:
        models.resolve_base(str(tmp_path / "no-such-model"))
    message = str(info.value)
    assert "\n" not in message and "no-such-model" in message


def test_an_uncached_hf_id_is_an_offline_error_not_a_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(BaseModelNotFoundError) as info:
        models.resolve_base("qwen1.5-1.8b")
    message = str(info.value)
    assert "Qwen/Qwen1.5-1.8B" in message and str(tmp_path / "hub") in message
    assert "huggingface-cli download Qwen/Qwen1.5-1.8B" in message


def test_hf_ids_and_presets_resolve_from_the_local_cache(tiny_base_dir, tmp_path, monkeypatch) -> None:
    hub = tmp_path / "hub"
    repo = hub / "models--mistralai--Mistral-7B-v0.1"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_base_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert models.resolve_base("mistral-7b") == snapshot
    assert models.resolve_base("mistralai/Mistral-7B-v0.1") == snapshot
    listing = scenelora("base", "list")
    assert listing.returncode == 0
    for preset in models.PRESETS.values():
        assert preset.name in listing.stdout and preset.hf_id in listing.stdout
    # the preset that is "downloaded" says where
    assert "no" in listing.stdout


def test_presets_cover_the_seed_families() -> None:
    assert models.PRESETS["mistral-7b"].hf_id == "mistralai/Mistral-7B-v0.1"
    assert models.PRESETS["qwen1.5-1.8b"].hf_id == "Qwen/Qwen1.5-1.8B"
    assert models.PRESETS["rugpt3-small"].hf_id == "ai-forever/rugpt3small_based_on_gpt2"
    assert {"saiga-mistral-7b", "saiga-llama3-8b"} <= set(models.PRESETS)


def test_base_path_prints_the_tiny_directory(tiny_base_dir: Path) -> None:
    result = scenelora("base", "path")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tiny_base_dir)


def test_fingerprint_covers_config_and_tensor_layout_only(tiny_base_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"] = "0.0.0"  # volatile keys don't count
    (copy / "config.json").write_text(json.dumps(config))
    assert models.fingerprint(copy) == models.fingerprint(tiny_base_dir)
    config["num_hidden_layers"] += 1
    (copy / "config.json").write_text(json.dumps(config))
    assert models.fingerprint(copy) != models.fingerprint(tiny_base_dir)


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BaseModelError, match="no CUDA device"):
        models.pick_device("cuda")
    assert models.pick_device("auto") == "cpu"


@pytest.mark.parametrize("quantize", ["8bit", "4bit"])
def test_quantized_bases_load_and_generate_on_cpu(tiny_base_dir: Path, quantize: str) -> None:
    from pytest_scenelora.engine.generation import GenerationConfig, generate

    base = models.load_base(str(tiny_base_dir), device="cpu", quantize=quantize)
    assert base.quantization.value == quantize
    linear_types = {type(m).__name__ for m in base.model.modules()}
    assert linear_types & {"Linear8bitLt", "Linear4bit"}
    [text] = generate(base.model, base.tokenizer, ["Topic: the harbour\n"],
                      config=GenerationConfig(max_new_tokens=8))
    assert text.strip()


@pytest.mark.parametrize("quantize", ["8bit", "4bit"])
def test_merge_equivalence_skips_on_a_quantized_base_and_says_why(
        pytester: pytest.Pytester, make_adapter, tiny_base_dir: Path, tmp_path: Path, quantize: str) -> None:
    from pytest_scenelora.shipped import suites_dir

    suite = pytester.path / "scene_field.yaml"
    shutil.copy(suites_dir() / suite.name, suite)
    line = next(n for n, text in enumerate(suite.read_text().splitlines(), 1) if "kind: merge_equivalence" in text)
    adapter = make_adapter("Δ42_poetic", seed=3)
    report = tmp_path / "results.json"
    args = (suite.name, "--adapter", str(adapter), "--base-model", str(tiny_base_dir), "--device", "cpu",
            "-k", "not scene_holds", "-p", "no:cacheprovider", "-rs",
            "--scenelora-json", str(report))
    quantized = pytester.runpytest(*args, "--quantize", quantize)
    quantized.assert_outcomes(passed=1, skipped=1, deselected=1)
    quantized.stdout.fnmatch_lines([f"SKIPPED [1] scene_field.yaml:{line}: merge_equivalence needs the base "
                                    f"unquantized, and this run loads it --quantize {quantize}; rerun with "
                                    "--quantize none to test merges"])
    assert [r["kind"] for r in json.loads(report.read_text())["results"]] == ["adapter_active"]
    pytester.runpytest(*args).assert_outcomes(passed=2, deselected=1)  # unquantized, it merges


def test_4bit_on_cpu_refuses_widths_not_divisible_by_32(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    odd = tmp_path / "odd"
    LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(odd)
    with pytest.raises(BaseModelError, match="divisible by 32") as info:
        models.quantization_config(models.Quantization.NF4, "cpu", odd)
    assert str(odd) in str(info.value) and "8bit" in str(info.value)


def test_weights_hash_tells_a_retrained_base_from_the_original(tiny_base_dir, tmp_path, monkeypatch) -> None:
    """Same shapes, other weights: the fingerprint (what adapters fit) stays, the content
    hash (what cached generations and trained adapters are keyed by) changes."""
    from safetensors.torch import load_file, save_file

    home = tmp_path / "home"
    monkeypatch.setenv("SCENELORA_HOME", str(home))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base_dir, copy)
    original = models.weights_hash(tiny_base_dir)
    assert models.weights_hash(copy) == original
    assert (home / "file-hashes.json").is_file()  # digests remembered by path, size, mtime

    tensors = load_file(str(copy / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert models.fingerprint(copy) == models.fingerprint(tiny_base_dir)
    retrained = models.weights_hash(copy)
    assert retrained != original

    (home / "file-hashes.json").write_text("{not json", encoding="utf-8")  # a broken memo is rebuilt
    assert models.weights_hash(copy) == retrained
    assert models.weights_hash(tiny_base_dir) == original
