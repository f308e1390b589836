"""An adapter library: many LoRA adapters on ONE base model in memory.

Adapters switch instantly, run several at once, and combine without retraining. PEFT
does each of those on a single ``PeftModel``; this class keeps the bookkeeping (display
names such as ``Δ42_poetic`` mapped to PEFT-safe keys, content hashes for cache keys)
and nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LibraryError
from ..fsutil import canonical_json, sha256_bytes
from . import adapters as adapter_files
from .bases import LoadedBase
from .generation import (
    BASE_ROW,
    DEFAULT_CONFIG,
    GenerationConfig,
    cpu_thread_limit,
    cpu_threads,
    encode_prompts,
    generate,
    last_logits_only,
)
from .lora_config import lora_config

#: Default for ``adapters=``: run whatever adapter is active (see :meth:`AdapterLibrary.switch`).
ACTIVE: Any = type("Active", (), {"__repr__": lambda self: "ACTIVE"})()
Rows = Any  # str | None | Sequence[str | None] | ACTIVE


@dataclass(frozen=True)
class LibraryEntry:
    """One adapter held by the library: from a file, or combined from others."""

    name: str
    key: str  # the PEFT adapter name: ASCII, no dots
    content_hash: str
    info: adapter_files.AdapterInfo | None = None
    combined_from: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def scene(self) -> str | None:
        return self.info.scene if self.info else adapter_files.parse_name(self.name)[0]

    @property
    def role(self) -> str | None:
        return self.info.role if self.info else adapter_files.parse_name(self.name)[1]


class AdapterLibrary:
    """Adapters attached to one base; switch, combine, mix in one batch, or merge."""

    def __init__(self, base: LoadedBase) -> None:
        self.base = base
        self._peft: Any = None
        self._entries: dict[str, LibraryEntry] = {}
        self._counter = 0

    # ------------------------------------------------------------------ contents
    @classmethod
    def from_paths(cls, base: LoadedBase, specs: Iterable[str | os.PathLike[str]]) -> AdapterLibrary:
        library = cls(base)
        for path in adapter_files.discover(specs):
            library.add(path)
        return library

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and adapter_files.normalize_name(name) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LibraryEntry]:
        return iter(self._entries.values())

    def entry(self, name: str) -> LibraryEntry:
        try:
            return self._entries[adapter_files.normalize_name(name)]
        except KeyError:
            held = ", ".join(self._entries) or "none"
            raise LibraryError(f"no adapter named {name!r} in the library (it holds: {held})") from None

    @property
    def model(self) -> Any:
        """The model to run: the PeftModel once an adapter is added, else the base."""
        return self._peft if self._peft is not None else self.base.model

    def _new_key(self) -> str:
        self._counter += 1
        return f"a{self._counter}"

    def add(self, source: str | os.PathLike[str] | adapter_files.AdapterInfo, *,
            name: str | None = None) -> str:
        """Validate an adapter against the base and attach it; returns its name."""
        from peft import get_peft_model, set_peft_model_state_dict

        info = (source if isinstance(source, adapter_files.AdapterInfo)
                else adapter_files.read_adapter(Path(source)))
        name = adapter_files.normalize_name(name or info.name)
        if name in self._entries:
            raise LibraryError(f"{info.path}: an adapter named {name!r} is already in the library")
        check = adapter_files.validate(info, self.base.path, self.base.fingerprint)
        check.raise_first()
        saved = info.peft_config.get("modules_to_save")
        if saved:
            raise LibraryError(
                f"{info.path}: the adapter saves whole modules ({', '.join(saved)}), which PEFT "
                "cannot run next to other adapters in the mixed batches the library generates with; "
                "test a LoRA-only adapter (trained without --allow-embedding-training)")
        tensors = adapter_files.load_tensors(info)
        key = self._new_key()
        config = lora_config(info.peft_config, where=info.path)
        if self._peft is None:
            from .quiet import peft_wrapping_quietly

            with peft_wrapping_quietly():
                self._peft = get_peft_model(self.base.model, config, adapter_name=key)
        else:
            self._peft.add_adapter(key, config)
        set_peft_model_state_dict(self._peft, tensors, adapter_name=key)
        self._peft.eval()
        self._peft.requires_grad_(False)  # held for inference, whatever the adapter config says
        self._entries[name] = LibraryEntry(name, key, info.content_hash, info,
                                           warnings=tuple(check.warnings))
        if len(self._entries) == 1:
            self._peft.set_adapter(key, inference_mode=True)
        return name

    def handle(self, name: str) -> AdapterHandle:
        """A handle on one held adapter (what the ``adapter`` fixture yields)."""
        return AdapterHandle(self, self.entry(name).name)

    def remove(self, name: str) -> None:
        entry = self.entry(name)
        if self.active == entry.name:
            others = [n for n in self._entries if n != entry.name]
            if others:
                self.switch(others[0])
        self._peft.delete_adapter(entry.key)
        del self._entries[entry.name]

    # ---------------------------------------------------------------- switching
    @property
    def active(self) -> str | None:
        if self._peft is None:
            return None
        key = self._peft.active_adapter
        return next((e.name for e in self._entries.values() if e.key == key), None)

    def switch(self, name: str) -> None:
        """Make *name* the active adapter: no reload, only PEFT's ``set_adapter``."""
        self._peft.set_adapter(self.entry(name).key, inference_mode=True)

    @contextlib.contextmanager
    def base_only(self) -> Iterator[Any]:
        """Run the base alone inside the block (every adapter bypassed)."""
        if self._peft is None:
            yield self.base.model
            return
        try:
            with self._peft.disable_adapter():
                yield self._peft
        finally:
            # PEFT re-enables the layers on the way out through set_adapter, which makes the
            # active adapter trainable again; the library holds every adapter frozen
            self._peft.requires_grad_(False)

    # ---------------------------------------------------------------- combining
    def combine(
        self, name: str, weights: Mapping[str, float], *, combination_type: str = "cat"
    ) -> str:
        """Add a weighted combination of held adapters as a new adapter.

        ``cat`` concatenates the LoRA factors, so the new update is exactly
        ``sum(w_i * delta_i)``; PEFT's other types (``linear``, ``svd``, ``ties`` ...)
        pass through.
        """
        if not weights:
            raise LibraryError("combine needs at least one adapter and weight")
        entries = [self.entry(n) for n in weights]
        name = adapter_files.normalize_name(name)
        if name in self._entries:
            raise LibraryError(f"an adapter named {name!r} is already in the library")
        key = self._new_key()
        self._peft.add_weighted_adapter(
            adapters=[e.key for e in entries],
            weights=[float(w) for w in weights.values()],
            adapter_name=key,
            combination_type=combination_type,
        )
        self._peft.requires_grad_(False)
        recipe = canonical_json({"type": combination_type,
                                 "parts": [[e.content_hash, float(w)] for e, w in
                                           zip(entries, weights.values(), strict=True)]})
        self._entries[name] = LibraryEntry(
            name, key, sha256_bytes("combined", recipe),
            combined_from={e.name: float(w) for e, w in zip(entries, weights.values(), strict=True)},
        )
        return name

    def merged(self, name: str) -> Any:
        """A copy of the base with *name* merged into its weights (``merge_and_unload``).

        The library itself is left untouched. The copy costs one base in memory.
        """
        entry = self.entry(name)
        if self.base.quantization.value != "none":
            raise LibraryError(
                f"cannot merge {name!r} into a {self.base.quantization.value}-quantized base "
                "copy; load the base with --quantize none to test merges"
            )
        import torch

        others = {other.key for other in self._entries.values() if other.key != entry.key}
        # the other adapters' layers are shared with the copy, not copied (it drops them at
        # once): with 16 adapters held, copying them all was most of a merge's time
        shared = {id(layer): layer for module in self._peft.modules()
                  if isinstance(module, (torch.nn.ModuleDict, torch.nn.ParameterDict))
                  for key, layer in module.items() if key in others}
        clone = copy.deepcopy(self._peft, memo=shared)
        # set_adapter freezes every other adapter's layers, the shared ones too: the library
        # holds them frozen already (see add), so nothing of it changes
        clone.set_adapter(entry.key, inference_mode=True)
        for key in others:
            clone.delete_adapter(key)
        return clone.merge_and_unload()

    # --------------------------------------------------------------- generation
    def _row_keys(self, adapters: Rows, rows: int) -> list[str] | None:
        """PEFT keys per row; None means "run the model as it is" (the active adapter)."""
        if adapters is ACTIVE:
            return None
        if adapters is None or isinstance(adapters, str):
            adapters = [adapters] * rows
        if len(adapters) != rows:
            raise ValueError(f"{len(adapters)} adapters for {rows} prompts")
        if self._peft is None:
            if any(a is not None for a in adapters):
                raise LibraryError("the library holds no adapters; add one before generating with it")
            return None
        return [BASE_ROW if a is None else self.entry(a).key for a in adapters]

    def generate(
        self,
        prompts: Sequence[str],
        adapters: Rows = ACTIVE,
        *,
        config: GenerationConfig = DEFAULT_CONFIG,
        seeds: Sequence[int] | None = None,
        trace: list[list[tuple[int, float]]] | None = None,
    ) -> list[str]:
        """Generate for each prompt in one batch.

        *adapters* is one name for every row, or one name per row (a mixed batch); None
        (for all or for a row) is the base alone; omitted, the active adapter speaks.
        *trace* receives each row's picks and their margins (see :func:`generation.generate`).
        """
        keys = self._row_keys(adapters, len(prompts))
        return generate(self.model, self.base.tokenizer, prompts, adapter_names=keys,
                        config=config, seeds=seeds, trace=trace)

    def logits(self, prompts: Sequence[str], adapters: Rows = ACTIVE, *, model: Any = None) -> Any:
        """Next-token logits after each prompt (float32, on CPU), one row per prompt."""
        import torch

        tokenizer = self.base.tokenizer
        runner = model if model is not None else self.model
        encoded = encode_prompts(runner, tokenizer, prompts)
        device = next(runner.parameters()).device
        extra = {}
        if model is None:
            keys = self._row_keys(adapters, len(prompts))
            extra = {"adapter_names": keys} if keys is not None else {}
        mask = encoded["attention_mask"].to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        threads = cpu_threads(runner) if device.type == "cpu" else None
        with torch.inference_mode(), cpu_thread_limit(threads):
            out = runner(input_ids=encoded["input_ids"].to(device), attention_mask=mask,
                         position_ids=positions, **extra, **last_logits_only(runner))
        return out.logits[:, -1, :].float().cpu()


#: State-dict name parts that are PEFT's own: an adapter's tensors ...
_ADAPTER_PARTS = ("lora_", "modules_to_save", "trainable_tokens_")
#: ... and the wrappers PEFT puts around a base module, which hold the base's tensors.
_WRAPPER_PARTS = frozenset({"base_layer", "original_module", "token_adapter"})


def base_tensors(model: Any) -> dict[str, Any]:
    """The base model's own tensors under the names it had before PEFT wrapped it.

    *model* is a base model, a PeftModel, or a library's ``model``. Whatever adapters are
    attached, these must stay bit-identical to a fresh load of the base: every adapter
    and the base rows of a session run on them, and results are cached under the base's
    hash. The tests compare them before and after attaching hostile adapters.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own: dict[str, Any] = {}
    for name, tensor in inner.state_dict().items():
        parts = name.split(".")
        if any(part.startswith(_ADAPTER_PARTS) for part in parts):
            continue
        own[".".join(part for part in parts if part not in _WRAPPER_PARTS)] = tensor
    return own


@dataclass(frozen=True)
class AdapterHandle:
    """One adapter of a library, as the ``adapter`` fixture gives it to a test."""

    library: AdapterLibrary
    name: str

    @property
    def entry(self) -> LibraryEntry:
        return self.library.entry(self.name)

    @property
    def scene(self) -> str | None:
        return self.entry.scene

    @property
    def role(self) -> str | None:
        return self.entry.role

    def generate(self, prompts: Sequence[str], *, config: GenerationConfig = DEFAULT_CONFIG,
                 seeds: Sequence[int] | None = None) -> list[str]:
        return self.library.generate(prompts, self.name, config=config, seeds=seeds)

    def logits(self, prompts: Sequence[str]) -> Any:
        return self.library.logits(prompts, self.name)
