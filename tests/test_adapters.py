"""The adapter formats: writing, reading, converting, and refusing bad input clearly."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_scenelora.engine import adapters as adapter_files
from pytest_scenelora.errors import AdapterFormatError, UnsafeFormatError

PROMPTS = ["Topic: a quiet harbour at night\n", "Scene: Δ42\n"]


def scenelora(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_scenelora.cli.main", *args],
                          capture_output=True, text=True)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line on stderr and no traceback."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("name", "scene", "role"),
    [("Δ42_poetic", "Δ42", "poetic"), ("Δ42_x_body", "Δ42_x", "body"),
     ("сцена 7_тело", "сцена 7", "тело"), ("noscene", None, None)],
)
def test_names_split_at_the_last_underscore(name: str, scene: str | None, role: str | None) -> None:
    assert adapter_files.parse_name(name) == (scene, role)


def test_metadata_wins_over_the_file_name(make_adapter, tmp_path: Path) -> None:
    path = make_adapter("Δ42_poetic")
    renamed = tmp_path / "something_else.safetensors"
    renamed.write_bytes(path.read_bytes())
    info = adapter_files.read_adapter(renamed)
    assert (info.name, info.scene, info.role) == ("something_else", "Δ42", "poetic")


# --------------------------------------------------------------------------- the format


def test_single_file_holds_peft_keys_and_the_contract_metadata(make_adapter, tiny_base_dir) -> None:
    from pytest_scenelora.engine.bases import fingerprint

    info = adapter_files.read_adapter(make_adapter("Δ42_logic", r=4))
    raw = info.path.read_bytes()
    meta = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]
    assert meta["format"] == "pt" and meta["scenelora_format"] == "1"
    assert meta["scene"] == "Δ42" and meta["role"] == "logic"
    assert meta["base_fingerprint"] == fingerprint(tiny_base_dir)
    assert json.loads(meta["peft_config"])["r"] == 4
    assert set(json.loads(meta["created_with"])) >= {"torch", "transformers", "peft"}
    assert all(k.startswith("base_model.model.") and (".lora_A." in k or ".lora_B." in k)
               for k in info.tensors)
    assert (info.rank, info.target_modules) == (4, ["o_proj", "v_proj"])


def test_unicode_names_round_trip_through_files_and_commands(make_adapter, tmp_path: Path) -> None:
    path = make_adapter("сцена 7_тело", directory=tmp_path)
    assert path.name == "сцена 7_тело.safetensors"
    result = scenelora("inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "сцена 7" in result.stdout and "тело" in result.stdout


def _logits(base_dir: Path, adapter_dir_or_file: Path) -> object:
    """Logits through plain PEFT for a folder, or through our library for a file."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pytest_scenelora.engine.bases import load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    if adapter_dir_or_file.is_dir():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                          adapter_dir_or_file)
    else:
        from pytest_scenelora.engine.bases import load_base
        from pytest_scenelora.engine.library import AdapterLibrary

        library = AdapterLibrary(load_base(str(base_dir), device="cpu"))
        library.add(adapter_dir_or_file)
        model = library.model
    with torch.inference_mode():
        return model.eval()(**batch).logits


def test_convert_is_lossless_both_ways(make_adapter, tiny_base_dir, tmp_path: Path) -> None:
    import torch

    original = make_adapter("Δ42_body", seed=3, targets=("q_proj", "v_proj", "o_proj"))
    folder = tmp_path / "Δ42_body"
    assert one_line_ok(scenelora("convert", str(original), str(folder)))
    back = tmp_path / "again" / "Δ42_body.safetensors"
    back.parent.mkdir()
    assert one_line_ok(scenelora("convert", str(folder), str(back)))

    first, second = adapter_files.read_adapter(original), adapter_files.read_adapter(back)
    assert first.content_hash == adapter_files.read_adapter(folder).content_hash == second.content_hash
    assert first.metadata == second.metadata  # provenance survives the round trip
    assert torch.equal(_logits(tiny_base_dir, original), _logits(tiny_base_dir, back))
    assert torch.equal(_logits(tiny_base_dir, folder), _logits(tiny_base_dir, back))


def one_line_ok(result: subprocess.CompletedProcess[str]) -> bool:
    assert result.returncode == 0, result.stderr
    return result.stdout.startswith("wrote ")


def test_a_folder_saved_by_plain_peft_converts_bit_identically(tiny_base_dir, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "o_proj"], init_lora_weights=False,
                   task_type="CAUSAL_LM"),
    )
    folder = tmp_path / "Δ42_silence"
    model.save_pretrained(folder)
    single = adapter_files.convert(folder, tmp_path)
    assert single == tmp_path / "Δ42_silence.safetensors"
    info = adapter_files.read_adapter(single)
    assert (info.scene, info.role, info.rank) == ("Δ42", "silence", 4)
    assert torch.equal(_logits(tiny_base_dir, folder), _logits(tiny_base_dir, single))


# ------------------------------------------------------------------------ bad adapters


def _rewrite(path: Path, dst: Path, *, tensors=None, metadata=None, drop=()) -> Path:
    from safetensors.torch import load_file, save_file

    info = adapter_files.read_adapter(path)
    state = load_file(str(path)) if tensors is None else tensors
    meta = {**info.metadata, "peft_config": json.dumps(info.peft_config)}
    meta.update(metadata or {})
    for key in drop:
        meta.pop(key, None)
    save_file(state, str(dst), metadata=meta)
    return dst


def _bad_adapters(make_adapter, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad adapter, with the words its error must contain."""
    import torch
    from safetensors.torch import load_file

    good = make_adapter("Δ42_poetic", seed=11)
    state = load_file(str(good))
    first = sorted(state)[0]
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, path: Path, words: str) -> None:
        cases[name] = (path, words)

    empty = tmp_path / "empty_x.safetensors"
    empty.write_bytes(b"")
    case("empty", empty, "empty")
    truncated = tmp_path / "trunc_x.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    case("truncated", truncated, "truncated")
    huge = tmp_path / "huge_x.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    case("header too large", huge, "header claims")
    notjson = tmp_path / "notjson_x.safetensors"
    notjson.write_bytes(struct.pack("<Q", 8) + b"not json")
    case("header not JSON", notjson, "not JSON")
    case("no config metadata",
         _rewrite(good, tmp_path / "noconf_x.safetensors", drop=("peft_config",)), "peft_config")
    nan = {**state, first: torch.full_like(state[first], float("nan"))}
    case("NaN", _rewrite(good, tmp_path / "nan_x.safetensors", tensors=nan), "NaN/Inf")
    inf = {**state, first: torch.full_like(state[first], float("inf"))}
    case("Inf", _rewrite(good, tmp_path / "inf_x.safetensors", tensors=inf), "NaN/Inf")
    missing = {k: v for k, v in state.items() if k != first}
    case("missing key", _rewrite(good, tmp_path / "missing_x.safetensors", tensors=missing), "missing")
    extra = {**state, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": state[first].clone()}
    case("unexpected key", _rewrite(good, tmp_path / "extra_x.safetensors", tensors=extra), "unexpected")
    wide = {k: torch.cat([v, v], dim=-1) if ".lora_A." in k else v for k, v in state.items()}
    case("shape", _rewrite(good, tmp_path / "shape_x.safetensors", tensors=wide), "has shape")
    info = adapter_files.read_adapter(good)
    absent = dict(info.peft_config, target_modules=["c_attn"])
    case("absent targets", _rewrite(good, tmp_path / "absent_x.safetensors",
                                    metadata={"peft_config": json.dumps(absent)}), "not found")
    nodir = tmp_path / "nodir_x"
    nodir.mkdir()
    (nodir / "adapter_model.safetensors").write_bytes(good.read_bytes())
    case("folder without adapter_config.json", nodir, "adapter_config.json")
    return cases


UNREADABLE = {"empty", "truncated", "header too large", "header not JSON", "no config metadata",
              "folder without adapter_config.json"}


def test_every_bad_adapter_is_one_clear_line_naming_the_file(make_adapter, tmp_path, tiny_base_dir, capsys):
    """Unreadable files fail `inspect` with one error line (exit 2); readable ones that
    don't fit the base are shown, marked UNUSABLE, with the reason (exit 1)."""
    from pytest_scenelora.cli.main import main

    for kind, (path, words) in _bad_adapters(make_adapter, tmp_path).items():
        code = main(["inspect", str(path), "--base-model", str(tiny_base_dir)])
        out, err = capsys.readouterr()
        if kind in UNREADABLE:
            assert code == 2 and out == "", kind
            assert len(err.splitlines()) == 1, (kind, err)
            line = err
        else:
            assert code == 1 and "UNUSABLE" in out, (kind, out)
            line = next(x for x in out.splitlines() if x.strip().startswith("error:"))
        assert str(path) in line and words in line, (kind, line)


def test_a_bad_adapter_on_the_command_line_prints_no_traceback(make_adapter, tmp_path) -> None:
    path = tmp_path / "Δ42_broken.safetensors"
    path.write_bytes(make_adapter("Δ42_poetic").read_bytes()[:-100])
    line = one_line_error(scenelora("inspect", str(path)))
    assert line.startswith(f"scenelora: error: {path}: truncated")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth"])
def test_pickles_are_refused_and_never_unpickled(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / f"Δ42_poetic{suffix}"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(UnsafeFormatError, match="unpickling runs arbitrary code"):
        adapter_files.read_adapter(path)
    folder = tmp_path / "peft_bin"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (folder / "adapter_model.bin").write_bytes(path.read_bytes())
    line = one_line_error(scenelora("inspect", str(folder)))
    assert "adapter_model.bin" in line and "unpickling" in line
    assert not marker.exists()


def test_a_different_base_with_fitting_shapes_is_a_warning_naming_both(make_adapter, tmp_path, tiny_base_dir):
    path = _rewrite(make_adapter("Δ42_logic"), tmp_path / "Δ42_logic.safetensors",
                    metadata={"base_fingerprint": "f" * 64, "base_model": "other-base"})
    result = scenelora("inspect", str(path), "--base-model", str(tiny_base_dir))
    assert result.returncode == 0, result.stdout
    warning = next(line for line in result.stdout.splitlines() if "warning:" in line)
    assert "other-base" in warning and str(tiny_base_dir.resolve()) in warning


def test_read_adapter_refuses_what_is_not_an_adapter(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(AdapterFormatError, match="not an adapter"):
        adapter_files.read_adapter(other)
    with pytest.raises(AdapterFormatError, match="no such adapter"):
        adapter_files.read_adapter(tmp_path / "missing_x.safetensors")


def test_discover_takes_files_folders_and_globs(make_adapter, tmp_path: Path) -> None:
    a = make_adapter("Δ42_logic", directory=tmp_path)
    b = make_adapter("Δ42_poetic", directory=tmp_path)
    peft_dir = make_adapter("Δ42_body", directory=tmp_path, as_dir=True)
    assert adapter_files.discover([tmp_path]) == sorted([a, b, peft_dir])
    assert adapter_files.discover([str(tmp_path / "Δ42_p*.safetensors")]) == [b]
    assert adapter_files.discover([a, a]) == [a]
    with pytest.raises(AdapterFormatError, match="matches no adapter"):
        adapter_files.discover([str(tmp_path / "nothing*.safetensors")])


def test_list_shows_a_library_and_which_adapters_fit_the_base(make_adapter, tmp_path, tiny_base_dir) -> None:
    make_adapter("Δ42_logic", directory=tmp_path, r=4)
    make_adapter("Δ42_poetic", directory=tmp_path, as_dir=True)
    (tmp_path / "Δ42_broken.safetensors").write_bytes(b"")
    result = scenelora("list", str(tmp_path), "--base-model", str(tiny_base_dir))
    assert result.returncode == 1  # one adapter is unusable
    rows = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()[1:]}
    assert rows["Δ42_logic"][1:5] == ["Δ42", "logic", "4", rows["Δ42_logic"][4]]
    assert rows["Δ42_logic"][5] == "yes" and rows["Δ42_poetic"][5] == "yes"
    assert rows["Δ42_broken"][5].startswith("no: ") and "empty" in rows["Δ42_broken"][5]
    ok = scenelora("list", str(tmp_path / "Δ42_poetic"), "--base-model", str(tiny_base_dir))
    assert ok.returncode == 0 and "Δ42_poetic" in ok.stdout
