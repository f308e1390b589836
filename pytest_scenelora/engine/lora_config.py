"""The LoRA config gate: which stored ``peft_config`` fields reach PEFT, and how.

Every adapter shares one base model, so an adapter's config must not be able to change
that base. lora_kwargs is the one place a stored peft_config becomes LoraConfig
arguments, on every path (read_adapter, validate, the library, the naive benchmark).
It passes only the fields below; anything else never reaches PEFT.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AdapterFormatError
from .safetensors_header import excerpt, is_count

#: Fields that shape the LoRA layers only, passed as stored (after a type check).
_PASSED = frozenset({
    "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "fan_in_fan_out",
    "use_rslora", "layers_to_transform", "layers_pattern", "rank_pattern",
    "alpha_pattern", "lora_bias", "ensure_weight_tying",
    # copies of whole base modules (``--allow-embedding-training``): the base's own module
    # is left as it is; the library refuses to run them in its mixed batches
    "modules_to_save",
})

#: Fields replaced whatever is stored. ``init_lora_weights``: the stored tensors replace
#: any initialisation, and PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA (and the orthogonal and
#: MiCA ones, which read it) compute from the base weight, the first four rewriting it in
#: place. ``bias``: "all" and "lora_only" make the base's own bias vectors part of the
#: adapter, so loading one would overwrite the shared base's biases (validate reports
#: such tensors). ``task_type``: this package runs causal LMs, and the first adapter's
#: task type picks the PeftModel class every later adapter shares.
_FORCED: dict[str, Any] = {"init_lora_weights": False, "bias": "none", "task_type": "CAUSAL_LM"}

#: Fields dropped: provenance, settings of the initialisations forced off above, and
#: Megatron's (``megatron_core`` names a module PEFT would import).
_DROPPED = frozenset({
    "peft_type", "auto_mapping", "base_model_name_or_path", "revision", "peft_version",
    "inference_mode", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
    "runtime_config", "megatron_config", "megatron_core", "qalora_group_size",
})

#: Fields refused when set: each changes the base or other adapters, or cannot run on one
#: shared base in PEFT's mixed batches (the library runs every check that way).
_REFUSED = {
    "layer_replication": "it rebuilds the base's layer stack, which every adapter shares",
    "kasa_config": "KaSA truncates the base layers' weights in place",
    "target_parameters": "it re-parametrizes the base's own weights",
    "trainable_token_indices": ("trainable tokens wrap the base's embedding for every adapter, and "
                                "PEFT then cannot load an adapter without them"),
    "use_dora": ("DoRA cannot run in the mixed batches the checks generate with (PEFT refuses "
                 "adapter_names with DoRA)"),
    "arrow_config": "Arrow routes between, and rewrites, the other adapters in the same model",
    "alora_invocation_tokens": "aLoRA acts only after invocation tokens, which no check's prompt holds",
    "use_qalora": "QA-LoRA is for GPTQ-quantized layers only",
    "use_bdlora": "BD-LoRA is a variant scenelora does not test",
    "velora_config": "VeLoRA is a variant scenelora does not test",
    "monteclora_config": "MonteCLoRA samples its weights, so outputs would not repeat",
}

_NAME = re.compile(r"\^?[A-Za-z0-9_.]{1,200}\$?")


def _config_error(where: Path | str, message: str) -> AdapterFormatError:
    return AdapterFormatError(f"{where}: peft_config {message}")


def _names(where: Path | str, key: str, value: Any, *, pattern: bool) -> None:
    """A list of module names. Those PEFT puts into a regular expression (*pattern*) may
    hold only name characters: a crafted expression can take hours to match."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _config_error(where, f"{key!r} is {excerpt(value)}; expected a list of module names")
    bad = next((v for v in value if pattern and not _NAME.fullmatch(v)), None)
    if bad is not None:
        raise _config_error(where, f"{key!r} holds {excerpt(bad)}, which PEFT would apply as a "
                                   "regular expression; list plain module names instead")


def _number(where: Path | str, key: str, value: Any, *, high: float = math.inf) -> None:
    """A finite JSON number (Python's json reads NaN and Infinity), at least 0 when capped."""
    low = 0.0 if math.isfinite(high) else -math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        expected = f"a number from 0 to {high:g}" if math.isfinite(high) else "a finite number"
        raise _config_error(where, f"{key!r} is {excerpt(value)}; expected {expected}")


def _check_field(where: Path | str, key: str, value: Any) -> None:
    if key == "r":
        if type(value) is not int or value <= 0:
            raise _config_error(where, f"has no positive integer rank 'r' (found {excerpt(value)})")
    elif key == "target_modules":
        if isinstance(value, str) and value != "all-linear":
            raise _config_error(
                where, f"'target_modules' is the string {excerpt(value)}, which PEFT applies as a "
                       "regular expression (a crafted one can hang the check); list the module "
                       'names instead, e.g. ["q_proj", "v_proj"]')
        if not isinstance(value, str):
            _names(where, key, value, pattern=False)
    elif key == "modules_to_save":
        _names(where, key, value, pattern=False)
    elif key == "exclude_modules":
        if isinstance(value, str):
            raise _config_error(
                where, f"'exclude_modules' is the string {excerpt(value)}, which PEFT applies as a "
                       "regular expression; list the module names instead")
        _names(where, key, value, pattern=False)
    elif key == "layers_pattern":
        _names(where, key, [value] if isinstance(value, str) else value, pattern=True)
    elif key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(value, dict):
            raise _config_error(where, f"{key!r} is {excerpt(value)}; expected an object")
        _names(where, key, list(value), pattern=True)
        for number in value.values():
            if key == "alpha_pattern":
                _number(where, key, number)
            elif type(number) is not int or number <= 0:
                raise _config_error(where, f"'rank_pattern' gives rank {excerpt(number)}; "
                                           "expected a positive integer")
    elif key == "lora_alpha":
        _number(where, key, value)
    elif key == "lora_dropout":
        _number(where, key, value, high=1.0)
    elif key == "layers_to_transform":
        items = [value] if type(value) is int else value
        if not isinstance(items, list) or not all(is_count(i) for i in items):
            raise _config_error(where, f"'layers_to_transform' is {excerpt(value)}; expected "
                                       "layer indices (non-negative integers)")
    elif not isinstance(value, bool):  # fan_in_fan_out, use_rslora, lora_bias, ensure_weight_tying
        raise _config_error(where, f"{key!r} is {excerpt(value)}; expected true or false")


def _is_set(value: Any) -> bool:
    return value not in (None, False, "", [], {})


def lora_kwargs(config: Mapping[str, Any], where: Path | str = "adapter") -> dict[str, Any]:
    """The LoraConfig arguments a stored *config* may give, checked; the one gate.

    Passes only fields that shape the LoRA layers, forces the initialisation off and the
    task to a causal LM, drops provenance and initialisation settings, and refuses
    (:class:`AdapterFormatError`, one line naming *where*) a field that would change the
    shared base or that a shared base cannot run. Fields this package does not know are
    never passed; :func:`ignored_config_keys` names those that were set. No PEFT import:
    :func:`read_adapter` runs it on every file it reads.
    """
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise AdapterFormatError(
            f"{where}: peft_type {excerpt(peft_type)} is not LoRA; only LoRA adapters are tested"
        )
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key in _REFUSED and _is_set(value):
            raise _config_error(where, f"sets {key!r}: {_REFUSED[key]}; retrain without it")
        if key in _PASSED and value is not None:
            _check_field(where, key, value)
            kwargs[key] = value
    if "r" not in kwargs:
        raise _config_error(where, "has no positive integer rank 'r'")
    return {**kwargs, **_FORCED}


def ignored_config_keys(config: Mapping[str, Any]) -> list[str]:
    """Keys of *config* that are set but that :func:`lora_kwargs` does not pass on."""
    known = _PASSED | _DROPPED | set(_FORCED) | set(_REFUSED)
    return sorted(k for k, v in config.items() if k not in known and _is_set(v))


def lora_config(config: Mapping[str, Any], *, inference: bool = True,
                where: Path | str = "adapter") -> Any:
    """A peft.LoraConfig from a stored dict, through :func:`lora_kwargs`."""
    import dataclasses

    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    kwargs = {k: v for k, v in lora_kwargs(config, where).items() if k in known}
    kwargs["inference_mode"] = inference
    return LoraConfig(**kwargs)
