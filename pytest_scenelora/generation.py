"""Batched text generation with one adapter per row.

A small decode loop of our own instead of ``model.generate``: it passes PEFT's
``adapter_names`` to every forward step (one adapter per row of a mixed batch), and it
samples each row with its own seeded generator, so a sample's text depends only on its
prompt, adapter, config and seed, never on which other rows share its batch. That is
what lets generations be cached per sample and batched freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .fsutil import canonical_json

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
    import torch

    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < config.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    adapter_names: Sequence[str] | None = None,
    config: GenerationConfig | None = None,
    seeds: Sequence[int] | None = None,
) -> list[str]:
    """Continue each prompt; row *i* uses ``adapter_names[i]`` and ``seeds[i]``.

    *adapter_names* are PEFT adapter keys (``__base__`` for the base alone); None runs
    the model as it is (its active adapter). Greedy decoding ignores *seeds*.
    """
    import torch
    from transformers import DynamicCache

    config = config or DEFAULT_CONFIG
    if not prompts:
        return []
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ValueError(f"{len(adapter_names)} adapter names for {len(prompts)} prompts")
    device = next(model.parameters()).device
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True)
    input_ids = encoded["input_ids"].to(device)
    mask = encoded["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = len(prompts)
    extra = {"adapter_names": list(adapter_names)} if adapter_names is not None else {}
    generators = None
    if config.do_sample:
        seeds = list(seeds) if seeds is not None else [0] * rows
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out_tokens: list[list[int]] = [[] for _ in range(rows)]
    finished = torch.zeros(rows, dtype=torch.bool)
    cache = DynamicCache()
    with torch.inference_mode():
        output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                       cache=cache, use_cache=True, **extra)
        next_pos = positions[:, -1:] + 1
        for _ in range(config.max_new_tokens):
            logits = output.logits[:, -1, :]
            if generators is None:
                chosen = logits.argmax(dim=-1).cpu()
            else:
                chosen = torch.tensor(
                    [_sample_row(logits[i].cpu(), config, generators[i]) for i in range(rows)]
                )
            for i in range(rows):
                if not finished[i]:
                    token = int(chosen[i])
                    if token == eos:
                        finished[i] = True
                    else:
                        out_tokens[i].append(token)
            if bool(finished.all()):
                break
            chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
            output = model(input_ids=chosen[:, None].to(device), attention_mask=mask,
                           position_ids=next_pos, cache=cache,
                           use_cache=True, **extra)
            next_pos = next_pos + 1
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in out_tokens]
