"""The adapter library: many adapters on one base, switched, mixed, combined, merged."""

from __future__ import annotations

import pytest
from near_ties import assert_same_decodes

from pytest_scenelora.engine.generation import GenerationConfig
from pytest_scenelora.engine.library import AdapterLibrary
from pytest_scenelora.errors import LibraryError

PROMPTS = [
    "Topic: a quiet harbour at night\n",
    "Topic: a kitchen before dawn\n",
    "Scene: Δ42\n",
]
SHORT = GenerationConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def library(tiny_base_dir, make_adapter) -> AdapterLibrary:
    from pytest_scenelora.engine.bases import load_base

    library = AdapterLibrary(load_base(str(tiny_base_dir), device="cpu"))  # a base of its own
    for seed, role in enumerate(["logic", "poetic", "body", "silence"]):
        library.add(make_adapter(f"Δ42_{role}", seed=seed))
    return library


def test_adapters_share_one_base_and_switch_without_reloading(library: AdapterLibrary) -> None:
    base_params = {id(p) for p in library.base.model.parameters()}
    assert library.names == ["Δ42_logic", "Δ42_poetic", "Δ42_body", "Δ42_silence"]
    logits = {}
    for name in library.names:
        library.switch(name)
        assert library.active == name
        logits[name] = library.logits(PROMPTS[:1])
    assert len({tuple(v.flatten()[:50].tolist()) for v in logits.values()}) == 4
    assert base_params <= {id(p) for p in library.model.parameters()}


def test_the_base_alone_differs_from_every_adapter(library: AdapterLibrary) -> None:
    import torch

    with library.base_only():
        base = library.logits(PROMPTS)
    # leaving the block re-enables the adapters, and leaves them frozen as the library holds them
    assert not any(p.requires_grad for p in library.model.parameters())
    assert torch.equal(base, library.logits(PROMPTS, [None] * len(PROMPTS)))
    for name in library.names:
        assert not torch.allclose(base, library.logits(PROMPTS, name), atol=1e-4)


def test_a_mixed_batch_computes_the_logits_of_one_adapter_at_a_time(library) -> None:
    """Up to float rounding: which rows share a batch changes how a CPU's vector units split
    the matrix products (AVX-512 differs from AVX2 here), never more than that."""
    import torch

    rows = [(p, a) for a in [*library.names, None] for p in PROMPTS]
    mixed = library.logits([p for p, _ in rows], [a for _, a in rows])
    alone = torch.cat([library.logits([p], [a]) for p, a in rows])
    assert (mixed - alone).abs().max() <= 1e-4


def test_mixed_batch_gives_the_same_greedy_text_as_one_adapter_at_a_time(library) -> None:
    """The same samples, as far as floats allow: a text may part from its one-row twin only
    at a near-tie (see ``near_ties.py``); here that is rarer than one row in ten."""
    rows = [(p, a) for a in [*library.names, None] for p in PROMPTS]
    traced: list = []
    mixed = library.generate([p for p, _ in rows], [a for _, a in rows], config=SHORT, trace=traced)
    alone_traces: list = []
    one_by_one = [library.generate([p], a, config=SHORT, trace=alone_traces)[0] for p, a in rows]
    assert_same_decodes(mixed, traced, one_by_one, alone_traces)
    assert len(set(mixed)) > len(PROMPTS)  # adapters really speak differently


def test_seeded_sampling_depends_on_the_seed_not_on_the_batch(library) -> None:
    config = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.95)
    alone_trace: list = []
    alone = library.generate(PROMPTS[:1], "Δ42_poetic", config=config, seeds=[5], trace=alone_trace)
    batch_trace: list = []
    in_batch = library.generate([PROMPTS[1], PROMPTS[0]], ["Δ42_logic", "Δ42_poetic"],
                                config=config, seeds=[9, 5], trace=batch_trace)
    assert_same_decodes(alone, alone_trace, in_batch[1:], batch_trace[1:], most_apart=0)
    draws = {library.generate(PROMPTS[:1], "Δ42_poetic", config=config, seeds=[s])[0]
             for s in range(6)}
    assert len(draws) > 1


def test_cat_combination_is_the_exact_weighted_sum(library) -> None:
    import torch

    name = library.combine("logic+poetic", {"Δ42_logic": 1.0, "Δ42_poetic": 0.5})
    peft = library.model
    module = peft.base_model.model.model.layers[0].self_attn.v_proj
    keys = {e.name: e.key for e in library}
    delta = {n: module.get_delta_weight(keys[n]) for n in ("Δ42_logic", "Δ42_poetic", name)}
    expected = delta["Δ42_logic"] + 0.5 * delta["Δ42_poetic"]
    assert torch.allclose(delta[name], expected, atol=1e-6)
    assert library.entry(name).combined_from == {"Δ42_logic": 1.0, "Δ42_poetic": 0.5}
    library.remove(name)
    assert name not in library


def test_merged_copy_matches_the_unmerged_adapter(library) -> None:
    import torch

    # held for inference: no adapter is trainable (a merge's copy shares their layers, and
    # freezing the copy's would otherwise change the library's)
    assert not any(p.requires_grad for p in library.model.parameters())
    before = library.logits(PROMPTS, ["Δ42_logic", None, "Δ42_poetic"])
    merged = library.merged("Δ42_body")
    assert torch.allclose(library.logits(PROMPTS, "Δ42_body"),
                          library.logits(PROMPTS, model=merged), atol=1e-4)
    assert library.names == ["Δ42_logic", "Δ42_poetic", "Δ42_body", "Δ42_silence"]
    # the library is as it was: its other adapters and the base give the very same logits
    assert torch.equal(library.logits(PROMPTS, ["Δ42_logic", None, "Δ42_poetic"]), before)
    assert not any(n for n, _ in merged.named_modules() if "lora" in n)  # a plain model


def test_unknown_names_say_what_the_library_holds(library) -> None:
    with pytest.raises(LibraryError, match=r"no adapter named 'Δ99_x'.*Δ42_logic"):
        library.switch("Δ99_x")


def test_a_misfit_adapter_is_refused_before_it_touches_the_model(tiny_base, make_adapter) -> None:
    from pytest_scenelora.errors import AdapterMismatchError

    library = AdapterLibrary(tiny_base)
    with pytest.raises(AdapterMismatchError, match="not found in the base model"):
        library.add(_retarget(make_adapter("Δ42_wrong"), "c_attn"))
    assert len(library) == 0


def _retarget(path, target):
    import json

    from safetensors.torch import load_file, save_file

    from pytest_scenelora.engine.adapters import read_adapter

    info = read_adapter(path)
    config = dict(info.peft_config, target_modules=[target])
    save_file(load_file(str(path)), str(path), metadata={**info.metadata, "peft_config": json.dumps(config)})
    return path


def test_prompt_forwards_project_only_the_last_position(library) -> None:
    """``logits_to_keep=1`` (what ``model.generate`` does in its prefill): the next-token
    logits are the full forward's last position, up to the rounding of a narrower product."""
    import torch

    from pytest_scenelora.engine.generation import encode_prompts, last_logits_only

    assert last_logits_only(library.model) == {"logits_to_keep": 1}
    assert last_logits_only(library.base.model) == {"logits_to_keep": 1}
    assert last_logits_only(torch.nn.Linear(2, 2)) == {}
    encoded = encode_prompts(library.model, library.base.tokenizer, PROMPTS)
    positions = (encoded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    library.switch("Δ42_body")
    with torch.inference_mode():
        full = library.model(**encoded, position_ids=positions).logits
    assert full.shape[1] > 1
    assert torch.allclose(library.logits(PROMPTS), full[:, -1, :].float(), atol=1e-5)
