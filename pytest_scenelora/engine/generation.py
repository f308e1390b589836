"""Batched text generation with one adapter per row.

A small decode loop of our own instead of ``model.generate``: it passes PEFT's
``adapter_names`` to every forward step (one adapter per row of a mixed batch), and it
samples each row with its own seeded generator, so a sample's text depends only on its
prompt, adapter, config and seed, not on which other rows share its batch. That is what
lets generations be cached per sample and batched freely.

"Only" up to float rounding: which rows share a batch changes how the CPU's vector units
(AVX2, AVX-512, AMX) or the GPU split a matrix product, so logits differ by ~1e-6, and a
pick that was within that of a tie can go the other way (then the rest of that sample
follows another path). :func:`decision_margin` says how close each pick was; tests
compare samples across batching and machines with it rather than by equality.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..fsutil import canonical_json
from .threads import cpu_thread_limit, cpu_threads

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. Part of every generation cache key."""

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p!r}")

    def key(self) -> str:
        return canonical_json(asdict(self))


DEFAULT_CONFIG = GenerationConfig()


def _sample_row(logits: Any, config: GenerationConfig, generator: Any) -> int:
    """The reference sampler for one row: what :func:`_sample_rows` computes, row by row.

    Kept as the definition of a sample (tests compare the batched sampler with it).
    """
    import torch

    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < config.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def decision_margin(logits: Any, config: GenerationConfig, generator_state: Any = None) -> tuple[int, float]:
    """The token one decode step picks from *logits*, and how far it is from picking another.

    The margin is a lower bound on the perturbation (largest change of any one logit) that
    could change the pick. Batched and one-row forwards, or two CPUs with other vector
    units, give logits that differ by rounding (~1e-6); a sample can only differ between
    them at a step whose margin is below that difference. Comparisons of texts across
    batching or machines use this to tell a near-tie from a real difference.

    Greedy: half the gap between the two largest logits. Sampled (*generator_state*: the
    row's generator state before the draw, which is replayed, not consumed): the draw is
    ``argmax(p_i / q_i)`` over the nucleus with exponential noise ``q`` in rank order (see
    :func:`_sample_rows`). A perturbation of size d moves the log ratio of any two
    probabilities, and the log-odds of any partial sum of them, by at most ``2d / T``, so
    it can change the pick only by closing the race between the winner and another
    candidate, by swapping two adjacent ranks (their noise swaps with them) where that
    changes the winner, or by moving the top-p boundary across tokens that would then win,
    or across the winner itself. ``tests/test_decision_margin.py`` checks the bound against
    the perturbations that come closest. Below ~1e-4 the sampler's own float32 sums blur
    it: such a step is a tie for any purpose.
    """
    import math

    import torch

    logits = logits.float()
    if not config.do_sample:
        top = torch.topk(logits, 2).values.tolist()
        return int(logits.argmax()), (top[0] - top[1]) / 2
    t = config.temperature
    logp = torch.log_softmax(logits / t, dim=-1).double()
    probs = logp.exp()
    generator = torch.Generator()
    if generator_state is not None:
        generator.set_state(generator_state)
    if config.top_p < 1.0:
        ranked_logp, order = torch.sort(logp, descending=True)
        ranked = ranked_logp.exp()
        before = ranked.cumsum(-1) - ranked  # mass ahead of each rank
        kept = int((before < config.top_p).sum())
    else:
        order = torch.arange(logp.numel())
        ranked_logp, ranked, kept = logp, probs, logp.numel()
        before = None
    noise = torch.empty(logp.numel(), dtype=torch.float32).exponential_(1, generator=generator).double()
    keys = ranked_logp - noise.log()  # log of p / q, in rank order
    winner = int(keys[:kept].argmax())
    scale = t / 2  # the logit change that closes a gap of 1 between two log keys

    # the likeliest few keys of the nucleus: enough to find the best rival of the winner
    # with any two other ranks left out
    values, indices = torch.topk(keys[:kept], min(4, kept))
    top = list(zip(indices.tolist(), values.tolist(), strict=True))

    def rival(*left_out: int) -> float:
        return next((value for rank, value in top if rank not in left_out), -math.inf)

    def gap(winning: float, rivals: float) -> float:
        return max(0.0, (winning - rivals) * scale)

    won = float(keys[winner])
    margins = [gap(won, rival(winner))]
    if config.top_p < 1.0:
        # the logit change that moves the mass ahead of each rank across top_p: it moves
        # that mass's log-odds by at most 2 / T per unit
        odds = lambda p: p.log() - (1 - p).log()  # noqa: E731
        top_p = torch.tensor(config.top_p, dtype=torch.float64)
        boundary = (odds(before.clamp(1e-300, 1 - 1e-16)) - odds(top_p)).abs() * (t / 2)
        if kept < logp.numel():  # tokens outside join the nucleus, and one of them wins
            joining = torch.maximum(boundary[kept:], (won - keys[kept:]).clamp(min=0) * scale)
            margins.append(float(joining.min()))
        if winner > 0:  # the winner falls outside it
            margins.append(float(boundary[winner]))
        # adjacent ranks r and r + 1 trade places, and noise, when their probabilities cross
        # (at the nucleus' edge the outer token comes in and the inner one leaves); a pair
        # further apart than the smallest margin so far cannot lower it
        gaps = ((ranked_logp[:-1] - ranked_logp[1:])[:kept] * scale).tolist()
        log_noise = noise.log().tolist()
        least = min(margins)
        for r in (i for i, g in enumerate(gaps) if g < least):
            swapped = {r + 1: float(ranked_logp[r + 1]) - log_noise[r]}
            if r + 1 < kept:
                swapped[r] = float(ranked_logp[r]) - log_noise[r + 1]
            rest = rival(r, r + 1, winner)
            if winner in (r, r + 1):  # the winner's own noise changes, or it leaves
                mine = swapped.get(winner)
                need = 0.0 if mine is None else gap(mine, max(rest, *(v for k, v in swapped.items()
                                                                      if k != winner)))
            else:
                need = gap(won, max(rest, *swapped.values()))
            margins.append(max(gaps[r], need))
    return int(order[winner]), min(margins, default=math.inf)


def _sample_rows(logits: Any, config: GenerationConfig, generators: Sequence[Any]) -> Any:
    """One token per row, each row drawn from its own generator; equal to
    ``[_sample_row(logits[i], config, generators[i]) for i in rows]``, batched.

    torch draws one multinomial sample as ``argmax(p / q)`` with ``q`` exponential(1)
    noise from the generator (the "exponential race", aten's fast path for one sample).
    Drawing ``q`` per row from the row's generator and doing the rest batched gives the
    same tokens as the per-row loop without a multinomial call per row and step. The
    descending sort for top-p is numpy's introsort (a third of ``torch.sort``'s time
    here): sorted *values* are the same whatever the algorithm, so the nucleus, the
    renormalised probabilities and the draw are too; only tied values may come out in
    another order, so a row whose drawn value has an equal neighbour is looked up in
    ``torch.sort``'s order instead. (Together these were 60% of a 64-row decode on one
    core.) ``tests/test_generation_speed.py`` holds the two samplers equal, ties included.
    """
    import torch

    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p >= 1.0:
        return _race(probs, generators)[:, 0]
    tokens = torch.empty(probs.shape[0], dtype=torch.long)
    for rows, ranked, order in _rankings(probs, config.top_p):
        if len(rows) == len(tokens):  # one group: no copies
            return _draw_from_nucleus(probs, ranked, order, config.top_p, generators)
        tokens[rows] = _draw_from_nucleus(probs[rows], ranked, order, config.top_p,
                                          [generators[i] for i in rows])
    return tokens


def _draw_from_nucleus(probs: Any, ranked: Any, order: Any, top_p: float, generators: Sequence[Any]) -> Any:
    """One token per row of *probs* from its top-p nucleus, given the rows' descending
    probabilities *ranked* (all of them, or a prefix that holds the nucleus) and their
    token ids *order*."""
    import torch

    keep = ranked.cumsum(-1) - ranked < top_p
    nucleus = ranked * keep  # the rest of the ranking, when it was cut, is outside the nucleus
    choice = _race(nucleus / nucleus.sum(-1, keepdim=True), generators, columns=probs.shape[-1])
    tokens = order.gather(-1, choice)[:, 0]
    # ties: the drawn rank holds a value equal to a neighbour's; take torch.sort's order there
    last = ranked.shape[-1] - 1
    drawn = ranked.gather(-1, choice)
    tied = (((ranked.gather(-1, (choice - 1).clamp(min=0)) == drawn) & (choice > 0))
            | ((ranked.gather(-1, (choice + 1).clamp(max=last)) == drawn) & (choice < last)))
    for row in tied[:, 0].nonzero()[:, 0].tolist():
        tokens[row] = torch.sort(probs[row], descending=True)[1][int(choice[row, 0])]
    return tokens


#: How many of the likeliest tokens the nucleus is first looked for in. Ranking only those
#: (``torch.topk``) costs a fraction of sorting the whole vocabulary, and at the suites'
#: temperatures most rows' nucleus ends inside them.
NUCLEUS_CANDIDATES = 64


def _rankings(probs: Any, top_p: float) -> Iterator[tuple[list[int], Any, Any]]:
    """The rows' probabilities in descending order and their token ids, as groups of
    ``(rows, ranked, order)``: the rows whose nucleus ends inside the likeliest
    :data:`NUCLEUS_CANDIDATES` + 1 tokens get only those, the others their full ranking.

    A prefix of the ranking is all top-p needs: the nucleus is a prefix, its cumulative
    sums are the same prefix sums, so the draw from it is the one from the full ranking.
    """
    import torch

    everything = list(range(probs.shape[0]))
    width = NUCLEUS_CANDIDATES + 1
    if width >= probs.shape[-1]:
        yield everything, *_full_ranking(probs)
        return
    ranked, order = torch.topk(probs, width, dim=-1)
    # the mass ahead of the 64th likeliest token, computed as the draw does: when it
    # reaches top_p, that token and every later one are outside the nucleus
    inside = (ranked[:, :-1].cumsum(-1)[:, -1] - ranked[:, -2]) >= top_p
    if bool(inside.all()):
        yield everything, ranked, order
        return
    short, wide = inside.nonzero()[:, 0].tolist(), (~inside).nonzero()[:, 0].tolist()
    if short:
        yield short, ranked[short], order[short]
    yield wide, *_full_ranking(probs[wide])


def _full_ranking(probs: Any) -> tuple[Any, Any]:
    """Every probability of each row in descending order, and the token ids (numpy's sort:
    the values come out as ``torch.sort``'s; ties are settled in :func:`_draw_from_nucleus`)."""
    import torch

    order = torch.from_numpy((-probs).numpy().argsort(axis=-1, kind="quicksort"))
    return probs.gather(-1, order), order


def _race(probs: Any, generators: Sequence[Any], *, columns: int | None = None) -> Any:
    """``torch.multinomial(probs[i], 1, generator=generators[i])`` for every row, as one
    argmax over ``probs / q`` with each row's exponential noise ``q`` from its generator.

    *probs* may hold only the first of *columns* columns, the rest being zeros (a nucleus
    cut from a ranking): zeros never win the race, so their noise is not drawn; each
    generator is only moved past it, by as many 64-bit draws, which is 4-5x cheaper than
    the exponentials (see :func:`_skipping_is_exact`). The tokens are the same.
    """
    import torch

    rest = (columns or probs.shape[-1]) - probs.shape[-1]
    if rest and not _skipping_is_exact():
        probs, rest = torch.nn.functional.pad(probs, (0, rest)), 0
    noise = torch.empty_like(probs)
    skipped = torch.empty(rest, dtype=torch.int64)
    for row, generator in enumerate(generators):
        noise[row].exponential_(1, generator=generator)
        if rest:
            skipped.random_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)


@functools.cache
def _skipping_is_exact() -> bool:
    """Whether drawing k exponentials, then n - k int64 random numbers, leaves a CPU
    generator where drawing n exponentials does, the k values being the first k of the n.

    True of torch's CPU kernels (each float exponential takes one 64-bit draw from the
    Mersenne twister, as an int64 ``random_`` does), but no API promises it: checked once
    per process, on the suites' shape; where it does not hold, the noise is drawn whole.
    """
    import torch

    whole, split = torch.Generator().manual_seed(20261129), torch.Generator().manual_seed(20261129)
    full = torch.empty(4096).exponential_(1, generator=whole)
    head = torch.empty(NUCLEUS_CANDIDATES + 1).exponential_(1, generator=split)
    torch.empty(4096 - head.numel(), dtype=torch.int64).random_(generator=split)
    return torch.equal(full[: head.numel()], head) and torch.equal(whole.get_state(), split.get_state())


def rows_per_batch(model: Any, tokens: int, *, share: float = 0.6, most: int = 512,
                   free: int | None = None) -> int:
    """How many rows of *tokens* (prompt plus new) one decode batch on CUDA can hold.

    Per row, the KV cache (2 x layers x kv heads x head width x tokens, in the model's
    dtype) and the prefill's float32 logits (tokens x vocabulary) dominate; *share* of
    the *free* bytes (by default what ``torch.cuda.mem_get_info`` reports) is spent on
    them, leaving room for activations and the allocator. A 7B Mistral in bf16 with 80
    tokens a row costs ~20 MiB a row (128 KiB of KV cache and 125 KiB of logits a token),
    so a card with 9 GiB free takes 279 rows.
    """
    import torch

    config = model.config if hasattr(model, "config") else model.get_base_model().config
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = next(model.parameters()).element_size()
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        width = 2  # activations and cache are in the compute dtype, not the storage one
    per_row = tokens * (2 * layers * heads * head_dim * width + 4 * config.vocab_size)
    if free is None:
        free, _total = torch.cuda.mem_get_info()
    return max(1, min(most, int(free * share) // max(per_row, 1)))


class _RowRouting:
    """One adapter per row, for the whole decode, without PEFT's per-step bookkeeping.

    PEFT's mixed batch (``adapter_names=`` on every forward) registers a pre-hook on every
    LoRA module per call, then per layer rebuilds the row lists of each adapter in Python
    and gathers and scatters those rows. Here the rows are sorted so that each adapter's
    rows are contiguous, and each LoRA ``Linear`` gets, for the duration of the decode, a
    forward that adds ``B(A(x[s:e])) * scaling`` to ``base(x)[s:e]``: the same arithmetic
    as PEFT's, on slices instead of gathered copies. Layer types other than plain LoRA
    ``Linear`` (quantized, DoRA and other variants) keep PEFT's own path.
    """

    def __init__(self, model: Any, keys: Sequence[str]) -> None:
        self.model = model
        self.order = sorted(range(len(keys)), key=lambda i: keys[i])
        self.groups: list[tuple[str, int, int]] = []
        for position, row in enumerate(self.order):
            key = keys[row]
            if self.groups and self.groups[-1][0] == key:
                self.groups[-1] = (key, self.groups[-1][1], position + 1)
            else:
                self.groups.append((key, position, position + 1))
        self._patched: list[Any] = []

    @staticmethod
    def supported(model: Any, keys: Sequence[str]) -> bool:
        try:
            from peft import PeftModel
            from peft.tuners.lora.layer import Linear, LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            return False
        if not isinstance(model, PeftModel):
            return False
        wanted = set(keys) - {BASE_ROW}
        for module in model.modules():
            if isinstance(module, LoraLayer):
                if type(module) is not Linear or wanted & set(module.lora_variant):
                    return False
                if getattr(module, "merged", False):
                    return False
        return True

    def __enter__(self) -> _RowRouting:
        from peft.tuners.lora.layer import Linear

        for module in self.model.modules():
            if type(module) is Linear:
                # per layer, the slices it adds to and their factors, looked up once per decode
                module._scenelora_plan = [
                    (start, end, module.lora_A[key].weight, module.lora_B[key].weight, module.scaling[key],
                     module.lora_dropout[key])
                    for key, start, end in self.groups if key != BASE_ROW and key in module.lora_A
                ]
                module.forward = _routed_forward.__get__(module)
                self._patched.append(module)
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self._patched:
            del module.forward
            del module._scenelora_plan
        self._patched.clear()


def _routed_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    # PEFT's ``lora_B(lora_A(dropout(x))) * scaling`` with the modules' own F.linear calls
    # made directly (the module-call overhead was most of a mixed batch's LoRA cost)
    from torch.nn.functional import linear

    result = self.base_layer(x, *args, **kwargs)
    if self.disable_adapters:
        return result
    for start, end, a, b, scaling, dropout in self._scenelora_plan:
        sub = x[start:end]
        if sub.dtype != a.dtype:
            sub = sub.to(a.dtype)
        if self.training:
            sub = dropout(sub)
        update = linear(linear(sub, a), b) * scaling
        result[start:end] += update if update.dtype == result.dtype else update.to(result.dtype)
    return result


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    adapter_names: Sequence[str] | None = None,
    config: GenerationConfig | None = None,
    seeds: Sequence[int] | None = None,
    trace: list[list[tuple[int, float]]] | None = None,
) -> list[str]:
    """Continue each prompt; row *i* uses ``adapter_names[i]`` and ``seeds[i]``.

    *adapter_names* are PEFT adapter keys (``__base__`` for the base alone); None runs
    the model as it is (its active adapter). Greedy decoding ignores *seeds*. A *trace*
    list receives, per row, each step's ``(token, margin)`` (:func:`decision_margin`; until
    the row's end): what a comparison across batching or machines needs to tell a
    rounding near-tie from a real difference. Tracing is slow; decoding does not need it.
    """
    config = config or DEFAULT_CONFIG
    if not prompts:
        return []
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ValueError(f"{len(adapter_names)} adapter names for {len(prompts)} prompts")
    rows = len(prompts)
    if config.do_sample:
        seeds = list(seeds) if seeds is not None else [0] * rows
    routing = None
    if adapter_names is not None and _RowRouting.supported(model, adapter_names):
        routing = _RowRouting(model, adapter_names)
        prompts = [prompts[i] for i in routing.order]
        seeds = [seeds[i] for i in routing.order] if config.do_sample else seeds
    steps = None if trace is None else [[] for _ in range(rows)]
    with cpu_thread_limit(cpu_threads(model) if _on_cpu(model) else None):
        if routing is None:
            texts = _decode(model, tokenizer, prompts, adapter_names, config, seeds, steps)
            order = range(rows)
        else:
            with routing:
                texts = _decode(model, tokenizer, prompts, None, config, seeds, steps)
            order = routing.order
    out, traced = [""] * rows, [[] for _ in range(rows)]
    for position, row in enumerate(order):
        out[row] = texts[position]
        if steps is not None:
            traced[row] = steps[position]
    if trace is not None:
        trace.extend(traced)
    return out


def _on_cpu(model: Any) -> bool:
    return next(model.parameters()).device.type == "cpu"


def max_positions(model: Any) -> int | None:
    """How many positions *model* (or the base under a PEFT wrapper) can attend over."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = getattr(model.get_base_model(), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def encode_prompts(model: Any, tokenizer: Any, prompts: Sequence[str], *, new_tokens: int = 0) -> Any:
    """Tokenize *prompts* as one left-padded batch, each cut from the left so that it and
    *new_tokens* more fit the model's positions.

    Scene cores and topic texts come from files anyone can propose: a prompt longer than
    the context would otherwise run past the position table or ask attention for memory
    quadratic in its length. The end of a prompt (the ``Scene:`` line's close, just before
    the continuation) is what a decoder conditions on most, so the start is what goes.
    """
    limit = max_positions(model)
    if limit is None:
        return tokenizer(list(prompts), return_tensors="pt", padding=True)
    keep = max(1, limit - new_tokens)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=keep)
    finally:
        tokenizer.truncation_side = side


def _decode(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    adapter_names: Sequence[str] | None,
    config: GenerationConfig,
    seeds: Sequence[int] | None,
    trace: list[list[tuple[int, float]]] | None = None,
) -> list[str]:
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    encoded = encode_prompts(model, tokenizer, prompts, new_tokens=config.max_new_tokens)
    input_ids = encoded["input_ids"].to(device)
    mask = encoded["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = len(prompts)
    extra = {"adapter_names": list(adapter_names)} if adapter_names is not None else {}
    generators = None
    if config.do_sample:
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    steps: list[Any] = []
    finished = torch.zeros(rows, dtype=torch.bool)
    cache = DynamicCache()
    with torch.inference_mode():
        output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                       cache=cache, use_cache=True, **extra)
        next_pos = positions[:, -1:] + 1
        for _ in range(config.max_new_tokens):
            logits = output.logits[:, -1, :]
            states = [g.get_state() for g in generators] if trace is not None and generators else None
            if generators is None:
                chosen = logits.argmax(dim=-1).cpu()
            else:
                chosen = _sample_rows(logits.cpu(), config, generators)
            if trace is not None:
                for row in (~finished).nonzero()[:, 0].tolist():
                    _, margin = decision_margin(logits[row].cpu(), config, states and states[row])
                    trace[row].append((int(chosen[row]), margin))
            # a row's tokens end at its first eos; later steps feed it padding
            chosen = torch.where(finished, torch.full_like(chosen, eos), chosen)
            steps.append(chosen)
            finished = finished | (chosen == eos)
            if bool(finished.all()):
                break
            chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
            output = model(input_ids=chosen[:, None].to(device), attention_mask=mask,
                           position_ids=next_pos, cache=cache,
                           use_cache=True, **extra)
            next_pos = next_pos + 1
    table = torch.stack(steps, dim=1).tolist()
    out_tokens = [row[: row.index(eos)] if eos in row else row for row in table]
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in out_tokens]
