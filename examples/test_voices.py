"""A project's own tests of its voices, written against pytest-scenelora's Python API.

    pytest examples/test_voices.py --adapter adapters/ [--base-model DIR] [--device cpu]

The plugin gives the fixtures: ``scenelora_base`` (the base, loaded once), ``adapter_library``
(every ``--adapter`` attached to it), ``adapter`` (one of them: a test that uses it runs once
per adapter) and ``train_adapter`` (train or reuse a LoRA adapter, cached by content hash).
Logits are compared with a tolerance, never for equality: a batch of several rows and a
batch of one round differently in the last bits.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings

from pytest_scenelora import GenerationConfig
from pytest_scenelora.prompts import scene_prompt
from pytest_scenelora.strategies import scenes

PROMPT = scene_prompt("Δ42", "", "token")  # the scene given as its hypertoken: "Scene: Δ42\n"
SHORT = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=12)


def test_every_adapter_rides_on_the_one_base(scenelora_base, adapter_library) -> None:
    assert adapter_library.base is scenelora_base  # loaded once, whatever the number of adapters


def test_the_voice_changes_what_the_base_says(adapter, adapter_library) -> None:
    voice = adapter.logits([PROMPT])
    base = adapter_library.logits([PROMPT], None)  # None: the base alone
    assert (voice - base).abs().max() > 1e-2, f"{adapter.name} leaves the base's logits as they are"


def test_a_mixed_batch_speaks_as_each_adapter_alone(adapter_library) -> None:
    names = adapter_library.names
    mixed = adapter_library.logits([PROMPT] * len(names), names)  # one adapter per row
    for row, name in enumerate(names):
        adapter_library.switch(name)  # PEFT's set_adapter: nothing is reloaded
        alone = adapter_library.logits([PROMPT])
        torch.testing.assert_close(mixed[row], alone[0], atol=1e-4, rtol=0)


def test_a_combination_of_one_adapter_at_weight_one_is_that_adapter(adapter, adapter_library) -> None:
    combined = adapter_library.combine(f"{adapter.name}_copy", {adapter.name: 1.0})
    torch.testing.assert_close(adapter_library.logits([PROMPT], combined), adapter.logits([PROMPT]),
                               atol=1e-4, rtol=0)


def test_merging_keeps_what_the_adapter_says(adapter, adapter_library) -> None:
    merged = adapter_library.merged(adapter.name)  # a copy of the base with the adapter merged in
    torch.testing.assert_close(adapter_library.logits([PROMPT], model=merged), adapter.logits([PROMPT]),
                               atol=1e-3, rtol=0)


def test_a_sample_depends_only_on_its_prompt_adapter_config_and_seed(adapter) -> None:
    first = adapter.generate([PROMPT, PROMPT], config=SHORT, seeds=[7, 8])
    assert adapter.generate([PROMPT, PROMPT], config=SHORT, seeds=[7, 8]) == first  # the same batch: exact


@settings(max_examples=5, deadline=None)
@given(scene=scenes())  # scenes shaped like the shipped ones, never one trained on
def test_every_unseen_scene_gets_an_answer(adapter, scene) -> None:
    [text] = adapter.generate([scene_prompt(scene.id, scene.core, "fragment")], config=SHORT, seeds=[0])
    assert text.strip(), f"{adapter.name} says nothing about {scene.core!r}"


def test_training_is_cached_by_content(train_adapter) -> None:
    first = train_adapter(scene="Δ42", role="poetic", steps=4, batch_size=4)
    again = train_adapter(scene="Δ42", role="poetic", steps=4, batch_size=4)
    assert again.reused_cache and again.info.content_hash == first.info.content_hash
    assert first.metadata["scene"] == "Δ42" and first.metadata["role"] == "poetic"
