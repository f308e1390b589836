"""Hostile adapters: configs that would change the shared base, and malformed headers.

Every adapter of a session runs on ONE base model, so an adapter's PEFT config must not
be able to rewrite it (PiSSA, OLoRA, CorDA and LoftQ initialisations do, in place), grow
it (``layer_replication``) or hang its validation (a regular expression as
``target_modules``). And a safetensors header is untrusted input: every field is checked
before a tensor byte is read, and each problem is one line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_scenelora.engine import adapters as adapter_files
from pytest_scenelora.engine.library import AdapterLibrary, base_tensors
from pytest_scenelora.engine.lora_config import ignored_config_keys, lora_config, lora_kwargs
from pytest_scenelora.errors import AdapterFormatError, AdapterMismatchError, LibraryError

PROMPTS = ["Topic: a quiet harbour at night\n", "Scene: Δ42\n"]


# ---------------------------------------------------------------------------- helpers


def read_raw(path: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header (as JSON) and its data bytes."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def forge(path: Path, header: Any, data: bytes, *, text: bytes | None = None) -> Path:
    """Write a safetensors file with exactly this header (an object, or raw *text*)."""
    text = json.dumps(header).encode() if text is None else text
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def with_config(src: Path, dst: Path, **changes: Any) -> Path:
    """*src*'s tensors under a peft_config changed by *changes* (None deletes a key)."""
    header, data = read_raw(src)
    config = json.loads(header["__metadata__"]["peft_config"])
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    header["__metadata__"]["peft_config"] = json.dumps(config)
    return forge(dst, header, data)


def refused_in_one_line(path: Path, words: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """*path* is refused by read_adapter with one short line naming it and holding *words*,
    and ``scenelora inspect`` exits 2 with one line on stderr; returns (message, stderr)."""
    from pytest_scenelora.cli.main import main

    with pytest.raises(AdapterFormatError) as caught:
        adapter_files.read_adapter(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message
    assert len(message) < 400, message
    assert main(["inspect", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and words in err and str(path) in err, err
    return message, err


def bits(tensor: Any) -> Any:
    """The tensor's bytes, so that equal means bit-identical (-0.0 is not 0.0)."""
    import torch

    return tensor.detach().reshape(-1).contiguous().view(torch.uint8)


def changed_tensors(before: dict[str, Any], model: Any) -> list[str]:
    """Names of base tensors that are missing, added, or not bit-identical."""
    import torch

    after = base_tensors(model)
    names = sorted(set(before) ^ set(after))
    names += sorted(k for k in set(before) & set(after)
                    if before[k].dtype != after[k].dtype or before[k].shape != after[k].shape
                    or not torch.equal(bits(before[k]), bits(after[k])))
    return names


def snapshot(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in base_tensors(model).items()}


def peft_initialisations() -> list[str]:
    """Every ``init_lora_weights`` string PEFT's LoraConfig declares, plus LoRA-GA (which
    its layers handle without declaring it) and a PiSSA with fast SVD."""
    from peft import LoraConfig

    declared = re.findall(r"'([^']+)'", str(LoraConfig.__dataclass_fields__["init_lora_weights"].type))
    assert "pissa" in declared, declared  # the introspection still finds PEFT's list
    return [*(d for d in declared if "[" not in d), "pissa_niter_2", "lora_ga"]


# ----------------------------------------------------- configs that would change the base

#: Stored configs the gate neutralises: the adapter attaches, the base stays as it was.
NEUTRALISED: dict[str, dict[str, Any]] = {
    "loftq": {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 1}},
    "corda": {"init_lora_weights": "corda", "corda_config": {"corda_method": "kpm"}},
    "eva": {"init_lora_weights": "eva", "eva_config": {"rho": 2.0}},
    "megatron": {"megatron_config": {"tensor_model_parallel_size": 1}, "megatron_core": "json"},
    "bias": {"bias": "all"},
    "task": {"task_type": "SEQ_CLS"},
}
#: LoRA options that wrap or read base modules without changing them; made by PEFT itself.
STRUCTURAL: dict[str, dict[str, Any]] = {
    "layers": {"layers_to_transform": [0, 2], "layers_pattern": "layers"},
    "patterns": {"rank_pattern": {"v_proj": 4}, "alpha_pattern": {"o_proj": 4}, "use_rslora": True},
}


def hostile_library_files(make_adapter, directory: Path) -> dict[str, Path]:
    """A good adapter and one of each hostile kind, PiSSA first (the first adapter is
    the one ``get_peft_model`` sees, the rest go through ``add_adapter``)."""
    directory.mkdir(parents=True, exist_ok=True)
    good = make_adapter("Δ42_good", seed=1, directory=directory)
    files = {"pissa": with_config(good, directory / "Δ42_pissa.safetensors", init_lora_weights="pissa"),
             "good": good}
    for init in peft_initialisations():
        name = re.sub(r"\W", "", init)
        files.setdefault(name, with_config(good, directory / f"Δ42_{name}.safetensors",
                                           init_lora_weights=init))
    for name, changes in NEUTRALISED.items():
        files[name] = with_config(good, directory / f"Δ42_{name}.safetensors", **changes)
    for seed, (name, options) in enumerate(STRUCTURAL.items(), start=10):
        files[name] = make_adapter(f"Δ42_{name}", seed=seed, directory=directory, **options)
    files["olora folder"] = adapter_files.convert(files["olora"], directory / "Δ42_olora_folder")  # PEFT's format
    return files


def test_pissa_next_to_a_good_adapter_leaves_the_base_bit_identical(tiny_base, make_adapter, tmp_path):
    """The reproduction of the issue: PiSSA's initialisation rewrote 8 base tensors."""
    good = make_adapter("Δ42_good", seed=1)
    pissa = with_config(good, tmp_path / "Δ42_pissa.safetensors", init_lora_weights="pissa")
    before = snapshot(tiny_base.model)
    library = AdapterLibrary(tiny_base)
    library.add(good)
    library.add(pissa)
    assert before and changed_tensors(before, library.model) == []


def test_every_hostile_adapter_in_one_library_leaves_every_base_tensor_bit_identical(
        tiny_base, tiny_base_dir, make_adapter, tmp_path) -> None:
    import torch

    from pytest_scenelora.engine.bases import load_base

    files = hostile_library_files(make_adapter, tmp_path / "hostile")
    before = snapshot(tiny_base.model)
    assert len(before) == len(tiny_base.model.state_dict())  # nothing wrapped yet
    library = AdapterLibrary(tiny_base)
    for kind, path in files.items():
        library.add(path)
        assert changed_tensors(before, library.model) == [], kind
    # every adapter runs, in one mixed batch, and changes what the base says
    names = library.names
    rows = [p for _ in names for p in PROMPTS]
    mixed = library.logits(rows, [n for n in names for _ in PROMPTS])
    with library.base_only():
        plain = library.logits(PROMPTS)
    for i, name in enumerate(names):
        assert not torch.allclose(mixed[2 * i : 2 * i + 2], plain, atol=1e-4), name
    # the good adapter says what it says on a base no hostile adapter has been near
    clean = AdapterLibrary(load_base(str(tiny_base_dir), device="cpu"))
    clean.add(files["good"])
    # (a mixed batch against a plain forward: equal up to the order of float sums)
    assert torch.allclose(library.logits(PROMPTS, "Δ42_good"), clean.logits(PROMPTS), atol=1e-4)
    # combining and merging (a copy of the base) leave it as it is too
    library.combine("pissa+good", {"Δ42_pissa": 1.0, "Δ42_good": 0.5})
    for name in ("Δ42_pissa", "Δ42_layers", "Δ42_patterns", "pissa+good"):
        library.merged(name)
    assert changed_tensors(before, library.model) == []


def test_every_peft_initialisation_is_forced_off_in_the_one_gate() -> None:
    for init in [*peft_initialisations(), True, "gaussian"]:
        config = lora_config({"r": 8, "target_modules": ["v_proj"], "init_lora_weights": init,
                                  "loftq_config": {"loftq_bits": 4}, "eva_config": {"rho": 2.0},
                                  "corda_config": {}, "megatron_config": {"a": 1},
                                  "megatron_core": "json", "bias": "lora_only",
                                  "task_type": "SEQ_2_SEQ_LM"})
        assert config.init_lora_weights is False, init
        assert (config.loftq_config, config.eva_config, config.megatron_config) == ({}, None, None)
        assert (config.bias, config.task_type) == ("none", "CAUSAL_LM")


def test_every_field_of_this_peft_s_lora_config_is_decided() -> None:
    """A PEFT upgrade that adds a LoraConfig field fails here until the gate says whether
    it is passed, forced, dropped or refused (until then, it is never passed)."""
    from peft import LoraConfig

    assert ignored_config_keys({f.name: "set" for f in dataclasses.fields(LoraConfig)}) == []


#: Configs refused outright: (changes to a good config, words the one line must hold).
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "target regex": ({"target_modules": ".*(v|o)_proj"}, "list the module names"),
    "target catastrophic regex": ({"target_modules": "(a|aa)+$"}, "regular expression"),
    "exclude regex": ({"exclude_modules": "(a+)+$"}, "regular expression"),
    "layers_pattern regex": ({"layers_to_transform": [0], "layers_pattern": "(x+)+y"},
                             "regular expression"),
    "rank_pattern regex": ({"rank_pattern": {"(a|a)*c": 4}}, "regular expression"),
    "layer_replication": ({"layer_replication": [[0, 2], [1, 4]]}, "layer stack"),
    "kasa": ({"kasa_config": {"knowledge_rank": 2}}, "truncates"),
    "target_parameters": ({"target_parameters": ["model.layers.0.mlp.up_proj.weight"]},
                          "re-parametrizes"),
    "dora": ({"use_dora": True}, "DoRA"),
    "trainable tokens": ({"trainable_token_indices": [5, 6]}, "trainable tokens"),
    "arrow": ({"arrow_config": {"top_k": 2}}, "arrow_config"),
    "alora": ({"alora_invocation_tokens": [5, 6]}, "invocation tokens"),
    "qalora": ({"use_qalora": True}, "GPTQ"),
    "bdlora": ({"use_bdlora": {"nblocks": 2}}, "use_bdlora"),
    "velora": ({"velora_config": {"num_groups": 2}}, "velora_config"),
    "monteclora": ({"monteclora_config": {"num_samples": 2}}, "samples its weights"),
    "zero rank": ({"r": 0}, "positive integer rank"),
    "rank as text": ({"r": "8"}, "positive integer rank"),
    "rank as boolean": ({"r": True}, "positive integer rank"),
    "infinite alpha": ({"lora_alpha": float("inf")}, "'lora_alpha' is inf; expected a finite number"),
    "alpha not a number": ({"alpha_pattern": {"v_proj": float("nan")}}, "expected a finite number"),
    "dropout above one": ({"lora_dropout": 2}, "from 0 to 1"),
    "not lora": ({"peft_type": "IA3"}, "not LoRA"),
    "targets not names": ({"target_modules": [1, 2]}, "module names"),
    "flag not a flag": ({"use_rslora": "yes"}, "true or false"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_config_that_would_alter_or_hang_the_base_is_one_line_naming_the_file(
        kind, make_adapter, tiny_base, tmp_path, capsys) -> None:
    changes, words = REFUSED[kind]
    path = with_config(make_adapter("Δ42_good", seed=1), tmp_path / "Δ42_bad.safetensors", **changes)
    message, err = refused_in_one_line(path, words, capsys)
    assert message in err, err

    # an AdapterInfo built by hand skips read_adapter, not the gate
    good = adapter_files.read_adapter(make_adapter("Δ42_good", seed=1))
    config = {**good.peft_config, **changes}
    forged = dataclasses.replace(good, name="Δ42_forged", path=path, peft_config=config)
    before = snapshot(tiny_base.model)
    library = AdapterLibrary(tiny_base)
    with pytest.raises(AdapterMismatchError, match=re.escape(words)):
        library.add(forged)
    with pytest.raises(AdapterFormatError, match=re.escape(words)):
        lora_config(config, where=path)
    library.add(good.path)
    assert library.names == ["Δ42_good"]
    assert changed_tensors(before, library.model) == []


def test_an_adapter_that_saves_whole_modules_is_read_but_not_run_in_a_mixed_batch_library(
        tiny_base, tiny_base_dir, tmp_path) -> None:
    """``--allow-embedding-training`` saves a copy of the LM head: the file is a valid adapter
    (``inspect`` reads it), but the library, which runs every check in mixed batches, refuses
    it in one line, and the base stays as it was."""
    from pytest_scenelora.engine.training import TrainSpec, train

    info = train(TrainSpec(scene="Δ42", role="poetic", base=str(tiny_base_dir), target_modules=("v_proj",),
                           modules_to_save=("lm_head",), allow_embedding_training=True, steps=2, r=4,
                           batch_size=4, max_length=32, device="cpu"), tmp_path, cache=False).info
    assert adapter_files.read_adapter(info.path).peft_config["modules_to_save"] == ["lm_head"]
    before = snapshot(tiny_base.model)
    library = AdapterLibrary(tiny_base)
    with pytest.raises(LibraryError, match=r"saves whole modules \(lm_head\).*mixed batches") as caught:
        library.add(info.path)
    assert str(caught.value).startswith(f"{info.path}: ") and "\n" not in str(caught.value)
    assert changed_tensors(before, library.model) == []


def test_a_config_nested_too_deeply_is_one_line(make_adapter, tmp_path) -> None:
    good = make_adapter("Δ42_good", seed=1)
    header, data = read_raw(good)
    header["__metadata__"]["peft_config"] = "[" * 100_000
    nested = forge(tmp_path / "Δ42_nested.safetensors", header, data)
    with pytest.raises(AdapterFormatError, match="'peft_config' is not JSON"):
        adapter_files.read_adapter(nested)
    folder = adapter_files.convert(good, tmp_path / "Δ42_folder")
    (folder / adapter_files.PEFT_CONFIG).write_text("{" + '"a":{' * 100_000, encoding="utf-8")
    with pytest.raises(AdapterFormatError, match="nests too deeply"):
        adapter_files.read_adapter(folder)
    (folder / adapter_files.PEFT_CONFIG).write_text(json.dumps({"r": 8, "target_modules": "(a|aa)+$"}))
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json: peft_config 'target_modules'"):
        adapter_files.read_adapter(folder)


def test_tensors_of_the_base_itself_in_an_adapter_are_refused(tiny_base, make_adapter, tmp_path) -> None:
    """``set_peft_model_state_dict`` loads any key it is given: a base weight named in an
    adapter would overwrite the shared base, so such files never reach it."""
    import torch
    from safetensors.torch import load_file, save_file

    good = make_adapter("Δ42_good", seed=1)
    header, _ = read_raw(good)
    state = load_file(str(good))
    weight = "base_model.model.model.layers.0.self_attn.v_proj.weight"
    bias = "base_model.model.model.layers.0.self_attn.v_proj.bias"
    overwrite = tmp_path / "Δ42_overwrite.safetensors"
    save_file({**state, weight: torch.zeros(128, 128)}, str(overwrite), metadata=header["__metadata__"])
    biased = with_config(good, tmp_path / "Δ42_biased.safetensors", bias="all")
    save_file({**state, bias: torch.full((128,), 3.0)}, str(biased),
              metadata=read_raw(biased)[0]["__metadata__"])

    before = snapshot(tiny_base.model)
    library = AdapterLibrary(tiny_base)
    library.add(good)
    with pytest.raises(AdapterMismatchError, match="unexpected tensor"):
        library.add(overwrite)
    with pytest.raises(AdapterMismatchError, match=r"bias vector\(s\) of the base itself.*bias='none'"):
        library.add(biased)
    assert library.names == ["Δ42_good"]
    assert changed_tensors(before, library.model) == []


def test_config_keys_the_gate_does_not_know_are_a_warning_not_passed_on(make_adapter, tiny_base_dir,
                                                                       tmp_path) -> None:
    path = with_config(make_adapter("Δ42_good", seed=1), tmp_path / "Δ42_future.safetensors",
                       hypothetical_variant={"depth": 3}, another_option=None)
    info = adapter_files.read_adapter(path)
    assert ignored_config_keys(info.peft_config) == ["hypothetical_variant"]
    assert "hypothetical_variant" not in lora_kwargs(info.peft_config)
    found = adapter_files.validate(info, tiny_base_dir)
    assert found.ok, found.errors
    assert any("'hypothetical_variant'" in w and "not pass" in w for w in found.warnings), found.warnings


def test_the_naive_reference_loads_through_the_gate(make_adapter, tiny_base_dir, tmp_path,
                                                    monkeypatch) -> None:
    """benchmarks/naive_peft.py loads PEFT folders with ``PeftModel.from_pretrained``,
    which would run a stored PiSSA initialisation on its base."""
    from pytest_scenelora.engine.bases import load_base

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    import naive_peft

    pissa = with_config(make_adapter("Δ42_good", seed=1), tmp_path / "Δ42_pissa.safetensors",
                        init_lora_weights="pissa")
    folder = adapter_files.convert(pissa, tmp_path / "Δ42_pissa")
    model = naive_peft.load_peft(tiny_base_dir, folder)
    assert model.peft_config["default"].init_lora_weights is False
    assert changed_tensors(snapshot(load_base(str(tiny_base_dir), device="cpu").model), model) == []


#: The inner session's conftest: at the very end, the session's base against a fresh load.
BASE_CHECK_CONFTEST = """
import json
from pathlib import Path

import pytest
import torch


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    from pytest_scenelora.engine.library import base_tensors
    from pytest_scenelora.engine.bases import load_base
    from pytest_scenelora.plugin import SESSION_KEY

    scene = session.config.stash[SESSION_KEY]
    if not scene.library_loaded:  # every result came from the cache
        Path(REPORT).write_text(json.dumps({"loaded": False}))
        return
    held = base_tensors(scene.library.model)
    fresh = base_tensors(load_base(scene.settings.base_model, device="cpu").model)
    def bits(t):
        return t.detach().reshape(-1).contiguous().view(torch.uint8)
    changed = sorted(k for k in fresh if k not in held or held[k].shape != fresh[k].shape
                     or not torch.equal(bits(held[k]), bits(fresh[k])))
    changed += sorted(set(held) - set(fresh))
    Path(REPORT).write_text(json.dumps({"compared": len(fresh), "changed": changed,
                                        "adapters": scene.library.names}))
"""

SESSION_SUITE = """\
suite: hostile adapters
adapters: "Δ42_*"
checks:
  - kind: adapter_active
    probes: 3
    threshold: 0.005
  - kind: merge_equivalence
    threshold: 0.001
"""


def test_a_whole_session_over_hostile_adapters_leaves_the_base_bit_identical(
        pytester, make_adapter, tiny_base_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))  # a cold cache: models load
    directory = tmp_path / "adapters"
    files = hostile_library_files(make_adapter, directory)
    report = tmp_path / "base-check.json"
    pytester.makeconftest(BASE_CHECK_CONFTEST.replace("REPORT", repr(str(report))))
    pytester.makefile(".yaml", hostile=SESSION_SUITE)
    result = pytester.runpytest("hostile.yaml", "--adapter", str(directory), "--base-model",
                                str(tiny_base_dir), "--device", "cpu", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output, output
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes and outcomes.get("passed", 0) + outcomes.get("failed", 0) \
        == 2 * len(files), output
    checked = json.loads(report.read_text())
    assert checked["compared"] > 0 and checked["changed"] == [], checked
    assert len(checked["adapters"]) == len(files)


# -------------------------------------------------------------------- malformed headers

Mutation = Callable[[dict[str, Any], bytes], tuple[bytes, bytes]]


def _first_two(header: dict[str, Any]) -> tuple[str, str]:
    """The first tensor in the data, and another of the same byte size."""
    tensors = sorted((k for k in header if k != "__metadata__"),
                     key=lambda k: header[k]["data_offsets"][0])

    def size(key: str) -> int:
        return header[key]["data_offsets"][1] - header[key]["data_offsets"][0]

    other = next(k for k in tensors[1:] if size(k) == size(tensors[0]))
    return tensors[0], other


def _edit(change: Callable[[dict[str, Any], str, str], None]) -> Mutation:
    def mutate(header: dict[str, Any], data: bytes) -> tuple[bytes, bytes]:
        first, other = _first_two(header)
        change(header, first, other)
        return json.dumps(header).encode(), data
    return mutate


def _set(field: str, value: Callable[[dict[str, Any]], Any]) -> Mutation:
    return _edit(lambda h, first, _: h[first].__setitem__(field, value(h[first])))


def _raw(text: bytes) -> Mutation:
    return lambda header, data: (text, data)


def _last_past_the_end(header: dict[str, Any], first: str, other: str) -> None:
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    start, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [start + 4096, end + 4096]


def _drop_middle(header: dict[str, Any], first: str, other: str) -> None:
    tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    del header[tensors[len(tensors) // 2]]


def _duplicate(header: dict[str, Any], data: bytes) -> tuple[bytes, bytes]:
    first, _ = _first_two(header)
    text = json.dumps(header)
    entry = json.dumps({first: header[first]})[1:-1]
    return ("{" + entry + "," + text[1:]).encode(), data


MALFORMED: dict[str, tuple[Mutation, str]] = {
    "shape holds a string": (_set("shape", lambda e: [str(d) for d in e["shape"]]), "has shape"),
    "shape holds null": (_set("shape", lambda e: [None, *e["shape"][1:]]), "has shape"),
    "shape is null": (_set("shape", lambda e: None), "has shape"),
    "shape holds a negative": (_set("shape", lambda e: [-e["shape"][0], -e["shape"][1]]), "has shape"),
    "offsets are strings": (_set("data_offsets", lambda e: [str(o) for o in e["data_offsets"]]),
                            "data_offsets"),
    "offsets are negative": (_set("data_offsets", lambda e: [o - 8 for o in e["data_offsets"]]),
                             "data_offsets"),
    "offsets are fractions": (_set("data_offsets", lambda e: [o + 0.5 for o in e["data_offsets"]]),
                              "data_offsets"),
    "offsets are booleans": (_set("data_offsets", lambda e: [False, e["data_offsets"][1]]),
                             "data_offsets"),
    "one offset": (_set("data_offsets", lambda e: e["data_offsets"][:1]), "data_offsets"),
    "offsets reversed": (_set("data_offsets", lambda e: e["data_offsets"][::-1]), "before it starts"),
    "offsets overlap": (_edit(lambda h, first, other: h[other].__setitem__(
        "data_offsets", list(h[first]["data_offsets"]))), "overlaps"),
    "offsets out of the file": (_edit(_last_past_the_end), "ends at byte"),
    "bytes no tensor holds": (_edit(_drop_middle), "belong to none"),
    "bytes after the last tensor": (lambda h, d: (json.dumps(h).encode(), d + bytes(16)),
                                    "follow the last tensor"),
    "span differs from the shape": (_set("shape", lambda e: [e["shape"][0] * 2, e["shape"][1]]),
                                    "claims shape"),
    "dtype unknown": (_set("dtype", lambda e: "F128"), "dtype"),
    "dtype not a string": (_set("dtype", lambda e: 4), "dtype"),
    "entry not an object": (_edit(lambda h, first, _: h.__setitem__(first, [1, 2])), "not an object"),
    "entry lacks its dtype": (_edit(lambda h, first, _: h[first].pop("dtype")), "lacks dtype"),
    "tensor named twice": (_duplicate, "twice"),
    "header is a list": (_raw(b"[]"), "not a JSON object"),
    "header is null": (_raw(b"null"), "not a JSON object"),
    "header nests deeply": (_raw(b"[" * 100_000), "nests too deeply"),
    "header nests deeply in objects": (_raw(b'{"a":' * 50_000), "nests too deeply"),
    "header not UTF-8": (_raw(b'{"\xff": 1}'), "not JSON"),
    "header holds NaN": (lambda h, d: (json.dumps(h).replace('"shape": [', '"shape": [NaN, ', 1)
                                       .encode(), d), "not JSON"),
    "header longer than the file": (lambda h, d: (json.dumps(h).encode() + b" " * (len(d) + 64), b""),
                                    "header claims"),
    "metadata not an object": (_edit(lambda h, *_: h.__setitem__("__metadata__", ["x"])), "__metadata__"),
    "metadata value a number": (_edit(lambda h, *_: h["__metadata__"].__setitem__("scene", 5)),
                                "__metadata__"),
    "metadata value an object": (_edit(lambda h, *_: h["__metadata__"].__setitem__("peft_config",
                                                                                    {"r": 8})),
                                 "__metadata__"),
}


@pytest.fixture(scope="module")
def good_header(make_adapter) -> tuple[dict[str, Any], bytes]:
    return read_raw(make_adapter("Δ42_good", seed=1))


def malformed(kind: str, good_header: tuple[dict[str, Any], bytes], directory: Path) -> Path:
    mutate, _ = MALFORMED[kind]
    header, data = good_header
    text, data = mutate(json.loads(json.dumps(header)), data)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "Δ42_bad.safetensors"
    if kind == "header longer than the file":  # the length prefix claims more than there is
        path.write_bytes(struct.pack("<Q", len(text) + 4096) + text)
        return path
    return forge(path, None, data, text=text)


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_header_is_one_line_from_inspect_list_and_convert(kind, good_header, tmp_path,
                                                                      capsys) -> None:
    from pytest_scenelora.cli.main import main

    path = malformed(kind, good_header, tmp_path / "lib")
    words = MALFORMED[kind][1]
    refused_in_one_line(path, words, capsys)
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and words in err, err
    assert main(["list", str(path.parent)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert [row for row in out.splitlines() if words in row and str(path) in row], out


#: The cases the issue names, through a whole pytest run (each costs an in-process run;
#: every case takes the same path there: read_header's one line, as the CLI test shows).
IN_A_RUN = ["shape holds a string", "shape holds null", "offsets are strings", "offsets are negative",
            "header nests deeply", "header longer than the file", "dtype unknown", "offsets overlap",
            "offsets out of the file", "header is a list", "metadata value a number"]


@pytest.mark.parametrize("kind", IN_A_RUN)
def test_a_malformed_header_errors_a_pytest_run_in_one_line(kind, good_header, pytester, tiny_base_dir,
                                                            tmp_path) -> None:
    path = malformed(kind, good_header, tmp_path / "lib")
    words = MALFORMED[kind][1]
    pytester.makepyfile(test_voice="def test_speaks(adapter):\n    assert adapter.name\n")
    result = pytester.runpytest("--adapter", str(path), "--base-model", str(tiny_base_dir),
                                "--device", "cpu", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    assert result.parseoutcomes().get("errors") == 1, output
    assert "INTERNALERROR" not in output and "Traceback" not in output, output
    assert [row for row in result.stdout.lines if str(path) in row and words in row], output
