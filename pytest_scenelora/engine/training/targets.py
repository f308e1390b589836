"""Where LoRA goes: presets mapped onto each architecture's module names, never the
embeddings or the LM head."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import TrainingError

#: Module names of input embeddings and LM heads across the model families of the presets.
EMBEDDING_MODULES = frozenset(
    {"embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out", "word_embeddings",
     "shared", "embed_positions"}
)


WHY_NOT_EMBEDDINGS = (
    "training embeddings or the LM head is refused, because when a scene's meaning is "
    "already compressed into a hypertoken (Δ42) training them destroys it"
)


class TargetPreset(str, enum.Enum):
    """Where LoRA goes (never the embeddings or the LM head), mapped onto each architecture's names."""

    HYPERTOKEN = "hypertoken"  # scene given as a token: change what attention projects
    FRAGMENT = "fragment"  # scene given as text: also where it looks (q_proj)
    ATTENTION_MLP = "attention-mlp"  # plus the MLP's gate
    ALL_LINEAR = "all-linear"  # every linear layer except embeddings and the LM head


#: Architecture families and the module names each preset targets in them. Llama,
#: Mistral and Qwen2 name their projections alike; the GPT-2 family (ruGPT-3) fuses
#: q, k and v into ``c_attn``, so there "hypertoken" cannot leave q out, and its attention
#: output is ``attn.c_proj`` (the MLP has a ``c_proj`` too).
_PROJ = "q/k/v/o_proj"


_GPT2 = "gpt2 (c_attn/c_proj)"


_FAMILY_OF_MODEL_TYPE = {
    "llama": _PROJ, "mistral": _PROJ, "mixtral": _PROJ, "qwen2": _PROJ, "qwen3": _PROJ,
    "gemma": _PROJ, "gemma2": _PROJ, "gpt2": _GPT2,
}


_PRESET_MODULES: dict[str, dict[TargetPreset, tuple[str, ...]]] = {
    _PROJ: {
        TargetPreset.HYPERTOKEN: ("v_proj", "o_proj"),
        TargetPreset.FRAGMENT: ("q_proj", "v_proj", "o_proj"),
        TargetPreset.ATTENTION_MLP: ("q_proj", "v_proj", "o_proj", "gate_proj"),
    },
    _GPT2: {
        TargetPreset.HYPERTOKEN: ("c_attn", "attn.c_proj"),
        TargetPreset.FRAGMENT: ("c_attn", "attn.c_proj"),
        TargetPreset.ATTENTION_MLP: ("c_attn", "attn.c_proj", "mlp.c_fc"),
    },
}


def _linear_types() -> tuple[type, ...]:
    import torch
    from transformers.pytorch_utils import Conv1D

    types: list[type] = [torch.nn.Linear, Conv1D]
    with contextlib.suppress(ImportError):
        import bitsandbytes as bnb

        types += [bnb.nn.Linear4bit, bnb.nn.Linear8bitLt]
    return tuple(types)


def embedding_module_names(model: Any) -> set[str]:
    """Full names of the model's input embeddings and LM head (tied or not)."""
    wanted = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        with contextlib.suppress(AttributeError, NotImplementedError):
            module = getattr(model, getter)()
            if module is not None:
                wanted.append(module)
    names = {name for name, module in model.named_modules() if any(module is w for w in wanted)}
    names |= {name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in EMBEDDING_MODULES}
    return names


def linear_leaf_names(model: Any) -> list[str]:
    """Leaf names of the linear layers LoRA can target, embeddings and LM head left out."""
    skip = embedding_module_names(model)
    linear = _linear_types()
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, linear) and name not in skip
    }
    return sorted(leaves)


def matches(module_name: str, target: str) -> bool:
    # PEFT's rule for a list of target names: the full name, or its dotted suffix.
    return module_name == target or module_name.endswith("." + target)


def architecture_family(model: Any) -> str:
    """The naming family of *model*'s layers, by ``config.model_type`` or by module names."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = _FAMILY_OF_MODEL_TYPE.get(model_type or "")
    if family:
        return family
    leaves = set(linear_leaf_names(model))
    if {"q_proj", "v_proj", "o_proj"} <= leaves:
        return _PROJ
    if "c_attn" in leaves:
        return _GPT2
    raise TrainingError(
        f"cannot map target presets onto architecture {model_type!r}: its linear layers are "
        f"named {', '.join(sorted(leaves)) or 'nothing'}; pass --target-modules with some of them"
    )


def target_modules_for(preset: TargetPreset | str, model: Any) -> list[str]:
    """The module names *preset* means on *model*'s architecture (Llama, Mistral, Qwen2, GPT-2)."""
    preset = parse_preset(preset)
    if preset is TargetPreset.ALL_LINEAR:
        return linear_leaf_names(model)
    return list(_PRESET_MODULES[architecture_family(model)][preset])


def parse_preset(value: TargetPreset | str) -> TargetPreset:
    try:
        return TargetPreset(value)
    except ValueError:
        allowed = ", ".join(p.value for p in TargetPreset)
        raise TrainingError(
            f"target preset {value!r} is unknown; use one of {allowed}, or --target-modules NAMES"
        ) from None


def refuse_embeddings(names: Sequence[str], what: str) -> None:
    bad = [n for n in names if n.rsplit(".", 1)[-1] in EMBEDDING_MODULES]
    if bad:
        raise TrainingError(
            f"{what} {bad[0]!r} is an embedding or the LM head: {WHY_NOT_EMBEDDINGS}; "
            "target attention projections instead (--preset hypertoken), or pass "
            "--allow-embedding-training if you mean it"
        )


@dataclass(frozen=True)
class TargetPlan:
    """What LoRA attaches to on one model: module names, and PEFT's Conv1D flag."""

    target_modules: tuple[str, ...]
    fan_in_fan_out: bool


