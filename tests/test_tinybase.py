"""The embedded tiny base: built offline, deterministic, cached by content."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pytest_scenelora import shipped
from pytest_scenelora.engine import tinybase
from pytest_scenelora.engine.bases import fingerprint, linear_widths


def test_the_tiny_base_is_a_normal_hf_folder_with_llama_module_names(tiny_base_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    names = {p.name for p in tiny_base_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    assert json.loads((tiny_base_dir / "config.json").read_text())["model_type"] == "llama"
    modules = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= modules
    widths = linear_widths(model)
    assert widths and all(i % 32 == 0 and o % 32 == 0 for _, i, o in widths), widths


def test_the_base_writes_the_corpus_language(tiny_base) -> None:
    """'Fluent-looking': greedy and sampled text is made of the corpus's own words."""
    from pytest_scenelora.engine.generation import GenerationConfig, generate

    text = "\n".join(p.read_text(encoding="utf-8") for p in shipped.corpus_files())
    vocabulary = set(re.findall(r"[a-z]+", text.lower()))
    topics = [line for line in text.splitlines() if line.startswith("Topic: ")][:6]
    prompts = [f"{t}\n" for t in topics]
    outputs = generate(tiny_base.model, tiny_base.tokenizer, prompts,
                       config=GenerationConfig(max_new_tokens=40, do_sample=True, temperature=0.8),
                       seeds=list(range(len(prompts))))
    words = [w for out in outputs for w in re.findall(r"[a-z]+", out.lower())]
    assert len(words) > 20 * len(prompts)
    known = sum(w in vocabulary for w in words) / len(words)
    build = (tiny_base.path / "scenelora_build.json").read_text(encoding="utf-8")
    assert known > 0.9, (known, outputs, build)


def test_the_base_speaks_a_scene_it_is_handed(tiny_base) -> None:
    """What the unseen-scene check builds on: handed a scene made of held-out words (which
    no adapter is trained on), the base names its figure and object. Trained on windows cut
    anywhere (recipe 2) it named both in 0 of these 8 scenes; recipe 3 names them in 6."""
    from pytest_scenelora.engine.generation import GenerationConfig, generate
    from pytest_scenelora.scenes import load_scenes
    from pytest_scenelora.strategies import novel_vocabularies, scene_from_fields

    scene_set = load_scenes(shipped.scenes_file())
    vocab = novel_vocabularies(scene_set)
    drawn = [scene_from_fields(scene_set, {name: words[(i * (k + 3)) % len(words)]
                                           for k, (name, words) in enumerate(vocab.items())})
             for i in range(8)]
    outputs = generate(tiny_base.model, tiny_base.tokenizer, [f"Scene: {s.core}\n" for s in drawn],
                       config=GenerationConfig(max_new_tokens=30, do_sample=False))
    named = [s.fields["figure"] in out and s.fields["object"] in out for s, out in zip(drawn, outputs, strict=True)]
    assert sum(named) >= 5, list(zip([s.core for s in drawn], outputs, strict=True))


def test_two_builds_give_the_same_bytes(tmp_path: Path) -> None:
    """The whole recipe (tokenizer, seeded init, data order, kernels, saving) on a short run:
    the shipped 400 steps take a minute or two more and exercise nothing else."""
    short = {"steps": 12, "converged_loss": 10.0}
    first, second = tmp_path / "first", tmp_path / "second"
    tinybase.build_tiny_base(first, recipe=short)
    tinybase.build_tiny_base(second, recipe=short)
    a = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    b = {p.name: p.read_bytes() for p in second.iterdir() if p.is_file()}
    assert a.keys() == b.keys() and "model.safetensors" in a
    assert [n for n in a if a[n] != b[n]] == []
    assert fingerprint(first) == fingerprint(second)


def test_the_cache_key_follows_corpus_and_recipe(tmp_path: Path) -> None:
    corpus = [shutil.copy(p, tmp_path / p.name) for p in shipped.corpus_files()]
    corpus = [Path(p) for p in corpus]
    key = tinybase.build_key(corpus)
    assert key == tinybase.build_key(shipped.corpus_files())
    with open(corpus[0], "a", encoding="utf-8") as fh:
        fh.write("\nTopic: one more line\nA changed corpus is a different base.\n")
    assert tinybase.build_key(corpus) != key
    assert tinybase.build_key(shipped.corpus_files(), {**tinybase.RECIPE, "steps": 1}) != key


def test_an_existing_build_is_reused_not_rebuilt(tiny_base_dir: Path, scenelora_home: Path) -> None:
    stamp = (tiny_base_dir / "model.safetensors").stat().st_mtime_ns
    assert tinybase.ensure_tiny_base(scenelora_home) == tiny_base_dir
    assert (tiny_base_dir / "model.safetensors").stat().st_mtime_ns == stamp
    log = tiny_base_dir.parent / f"{tiny_base_dir.name}.build.log"
    assert re.match(r"built in [\d.]+s, final loss [\d.]+", log.read_text())


def test_a_build_that_does_not_learn_is_retried_then_refused(tmp_path: Path) -> None:
    """Two steps cannot bring the loss down: the build retries at half the learning rate,
    then stops with one clear line and leaves nothing behind."""
    from pytest_scenelora.errors import BaseModelError

    corpus = tmp_path / "small.txt"
    corpus.write_text("Topic: the sea\nThe sea is grey and the boats come home.\n\n"
                      "Topic: the hills\nThe hills are green and the sheep are slow.\n", encoding="utf-8")
    seen: list[str] = []
    tiny = {"steps": 2, "warmup_steps": 1, "batch_size": 2, "seq_len": 16, "vocab_size": 300}
    with pytest.raises(BaseModelError, match=r"did not learn its corpus.*settled at \d") as info:
        tinybase.build_tiny_base(tmp_path / "out", corpus=[corpus], recipe=tiny, progress=seen.append)
    assert "\n" not in str(info.value)
    assert any("retraining at half the learning rate" in line for line in seen)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_the_build_records_its_loss_curve(tiny_base_dir: Path) -> None:
    build = json.loads((tiny_base_dir / "scenelora_build.json").read_text(encoding="utf-8"))
    assert build["attempt"] in (1, 2)
    assert build["settled_loss"] <= tinybase.RECIPE["converged_loss"]
    assert len(build["loss_every_10_steps"]) == -(-tinybase.RECIPE["steps"] // 10)


def test_an_empty_corpus_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        tinybase.build_tiny_base(tmp_path / "out", corpus=[empty])
