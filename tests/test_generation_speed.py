"""The fast decode paths give the text of the plain ones.

``sample_rows`` (batched top-p sampling) must draw the tokens of the per-row reference
sampler, ties included; row routing (contiguous adapter slices instead of PEFT's
``adapter_names`` per step) must give PEFT's mixed-batch text, greedy and sampled, as far
as float rounding allows (a text may part only at a near-tie: ``near_ties.py``).
"""

from __future__ import annotations

import pytest
from near_ties import assert_same_decodes

from pytest_scenelora.engine.generation import (
    GenerationConfig,
    _decode,
    _RowRouting,
    generate,
)
from pytest_scenelora.engine.sampling import sample_row, sample_rows
from pytest_scenelora.engine.threads import cpu_threads, encoder_threads

CONFIGS = [
    GenerationConfig(do_sample=True, temperature=0.5, top_p=0.95),  # the shipped suites'
    GenerationConfig(do_sample=True, temperature=0.9, top_p=0.95),
    GenerationConfig(do_sample=True, temperature=0.7, top_p=0.5),
    GenerationConfig(do_sample=True, temperature=1.3, top_p=1.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"T{c.temperature}-p{c.top_p}")
def test_batched_sampler_draws_the_tokens_of_the_per_row_sampler(config) -> None:
    import torch

    torch.manual_seed(0)
    for trial in range(40):
        logits = torch.randn(8, 4096) * torch.linspace(0.3, 12, 8)[:, None]
        if trial % 2 == 1:
            logits = torch.randn(8, 4096) * 12  # every row peaked: the nucleus is a short prefix
        if trial % 3 == 0:
            logits[:4, :3000] = logits[:4, :1]  # a wide plateau of exact ties
        if trial % 3 == 1:
            logits[::2] = torch.round(logits[::2])  # ties everywhere
        if trial % 5 == 0:
            logits[:, 5:40] = logits.max()  # tied favourites
        seeds = [trial * 100 + i for i in range(8)]
        expected = [sample_row(logits[i], config, torch.Generator().manual_seed(s))
                    for i, s in enumerate(seeds)]
        drawn = sample_rows(logits, config, [torch.Generator().manual_seed(s) for s in seeds])
        assert drawn.tolist() == expected


def test_noise_outside_a_cut_nucleus_is_skipped_exactly(monkeypatch) -> None:
    """Where the ranking was cut, each generator is moved past the noise of the columns that
    cannot win instead of drawing it: on this torch that shortcut must hold (else the speed
    is lost silently), and the fallback that draws the noise whole must draw the same tokens."""
    import torch

    from pytest_scenelora.engine import sampling

    assert sampling.skipping_is_exact()
    torch.manual_seed(2)
    logits = torch.randn(16, 4096) * 12  # peaked rows: a short nucleus, the ranking is cut
    config = CONFIGS[0]
    seeds = list(range(16))
    fast_generators = [torch.Generator().manual_seed(s) for s in seeds]
    fast = sample_rows(logits, config, fast_generators)
    monkeypatch.setattr(sampling, "skipping_is_exact", lambda: False)
    whole_generators = [torch.Generator().manual_seed(s) for s in seeds]
    assert torch.equal(sample_rows(logits, config, whole_generators), fast)
    # and every generator stands where the whole draw left it: the next tokens agree too
    assert all(torch.equal(a.get_state(), b.get_state())
               for a, b in zip(fast_generators, whole_generators, strict=True))


def test_only_rows_whose_nucleus_ends_early_get_a_cut_ranking() -> None:
    import torch

    from pytest_scenelora.engine.sampling import NUCLEUS_CANDIDATES, rankings

    torch.manual_seed(1)
    peaked = torch.softmax(torch.randn(4, 4096) * 12, dim=-1)
    [(rows, ranked, order)] = rankings(peaked, 0.95)
    assert rows == [0, 1, 2, 3] and ranked.shape == (4, NUCLEUS_CANDIDATES + 1)
    assert torch.equal(ranked, peaked.gather(-1, order))
    assert torch.equal(ranked, torch.sort(peaked, descending=True).values[:, : NUCLEUS_CANDIDATES + 1])
    flat = torch.full((1, 4096), 1 / 4096)  # a wide nucleus: this row needs its full ranking
    mixed = torch.cat([peaked[:2], flat, peaked[2:]])
    groups = list(rankings(mixed, 0.95))
    assert [(rows, ranked.shape) for rows, ranked, _ in groups] == [
        ([0, 1, 3, 4], (4, NUCLEUS_CANDIDATES + 1)), ([2], (1, 4096))]
    assert torch.equal(groups[1][1], flat)


@pytest.fixture(scope="module")
def library(tiny_base_dir, make_adapter):
    from pytest_scenelora.engine.bases import load_base
    from pytest_scenelora.engine.library import AdapterLibrary

    # a base of its own: PEFT wraps the model in place, and the session's tiny_base is shared
    library = AdapterLibrary(load_base(str(tiny_base_dir), device="cpu"))
    for seed, role in enumerate(["logic", "poetic", "body"]):
        library.add(make_adapter(f"Δ42_{role}", seed=seed + 10))
    return library


@pytest.mark.parametrize("config", [GenerationConfig(max_new_tokens=16),
                                    GenerationConfig(max_new_tokens=16, do_sample=True,
                                                     temperature=0.9, top_p=0.95)],
                         ids=["greedy", "sampled"])
def test_row_routing_gives_the_text_of_peft_mixed_batches(library, config) -> None:
    prompts = ["Topic: a quiet harbour at night\n", "Scene: Δ42\n", "Topic: a cold winter\n"]
    keys = [e.key for e in library] + ["__base__"]
    rows = [(p, k) for k in keys for p in prompts]
    rows = rows[1::2] + rows[::2]  # adapters interleaved, as the runner's batches are
    names = [k for _, k in rows]
    seeds = list(range(100, 100 + len(rows)))
    assert _RowRouting.supported(library.model, names)
    routed_trace: list = []
    routed = generate(library.model, library.base.tokenizer, [p for p, _ in rows],
                      adapter_names=names, config=config, seeds=seeds, trace=routed_trace)
    peft_trace: list = [[] for _ in rows]
    peft = _decode(library.model, library.base.tokenizer, [p for p, _ in rows], names, config, seeds,
                   peft_trace)
    # the same arithmetic on slices instead of gathered rows: equal up to float rounding
    assert_same_decodes(routed, routed_trace, peft, peft_trace)
    assert len(set(routed)) > len(prompts)
    # the patch is gone afterwards: the model runs as PEFT made it
    assert not any("forward" in vars(m) for m in library.model.modules())


def test_small_models_decode_on_one_thread(tiny_base, monkeypatch) -> None:
    monkeypatch.delenv("SCENELORA_CPU_THREADS", raising=False)
    assert cpu_threads(tiny_base.model) == 1
    monkeypatch.setenv("SCENELORA_CPU_THREADS", "3")
    assert cpu_threads(tiny_base.model) == 3


def test_the_encoder_uses_the_cores_no_other_worker_uses(monkeypatch) -> None:
    import os

    monkeypatch.delenv("SCENELORA_CPU_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert encoder_threads() == 4  # alone: every core
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert encoder_threads() == 2
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "8")
    assert encoder_threads() == 1  # more workers than cores: one thread each, never none
    monkeypatch.setenv("SCENELORA_CPU_THREADS", "3")
    assert encoder_threads() == 3


def test_cuda_batches_are_sized_from_free_memory(tiny_base) -> None:
    """The arithmetic ``--device cuda`` sizes batches with, on a Mistral-7B-shaped model
    (built on the meta device: no memory) and on the tiny base."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from pytest_scenelora.engine.generation import rows_per_batch

    with torch.device("meta"):
        mistral = MistralForCausalLM(MistralConfig()).to(torch.bfloat16)  # the 7B's shape
    gib = 2**30
    assert rows_per_batch(mistral, 80, free=9 * gib) == 279  # ~20 MiB a row
    assert rows_per_batch(mistral, 160, free=9 * gib) == 139  # twice the tokens, half the rows
    assert rows_per_batch(mistral, 80, free=64 * gib) == 512  # capped
    assert rows_per_batch(mistral, 80, free=10 * 2**20) == 1  # never none
    # the tiny base: float32, 4 layers of 2 KV heads of 32, 4,096 tokens of vocabulary
    per_row = 80 * (2 * 4 * 2 * 32 * 4 + 4 * 4096)
    assert rows_per_batch(tiny_base.model, 80, free=gib, most=10**6) == int(gib * 0.6) // per_row

