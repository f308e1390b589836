"""Batched text generation with one adapter per row.

A small decode loop of our own instead of ``model.generate``: it passes PEFT's
``adapter_names`` to every forward step (one adapter per row of a mixed batch), and it
samples each row with its own seeded generator, so a sample's text depends only on its
prompt, adapter, config and seed, not on which other rows share its batch. That is what
lets generations be cached per sample and batched freely.

"Only" up to float rounding: which rows share a batch changes how the CPU's vector units
(AVX2, AVX-512, AMX) or the GPU split a matrix product, so logits differ by ~1e-6, and a
pick that was within that of a tie can go the other way (then the rest of that sample
follows another path). :func:`.sampling.decision_margin` says how close each pick was; tests
compare samples across batching and machines with it rather than by equality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..fsutil import canonical_json
from .sampling import decision_margin, sample_rows
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


def last_logits_only(model: Any) -> dict[str, Any]:
    """``{"logits_to_keep": 1}`` where the model's forward takes it (transformers' causal
    LMs), else nothing: a forward over prompts then projects only each row's last position
    onto the vocabulary, the one a next token is picked from (rows are left-padded), not
    every prompt position. On a 49k-token vocabulary that projection was about a tenth of
    a 64-row batch's generation time; ``model.generate`` skips it the same way."""
    return {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the forward of *model* (or of the base under a PEFT wrapper) takes
    ``logits_to_keep``: transformers' causal LMs, whose logits are their output module
    applied to the positions kept."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


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
                       cache=cache, use_cache=True, **extra, **last_logits_only(model))
        next_pos = positions[:, -1:] + 1
        for _ in range(config.max_new_tokens):
            logits = output.logits[:, -1, :]
            states = [g.get_state() for g in generators] if trace is not None and generators else None
            if generators is None:
                chosen = logits.argmax(dim=-1).cpu()
            else:
                chosen = sample_rows(logits.cpu(), config, generators)
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
