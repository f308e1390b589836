"""Training LoRA and QLoRA adapters, reproducibly.

One adapter is one scene spoken in one role (``Δ42_poetic``). It trains on every
example of its role: the examples of its own scene are prompted the way the scene is
given to the model (the hypertoken alone, ``Scene: Δ42``, or its core text), examples of
other scenes always by their core text, and topic examples by their topic, so the
adapter learns the voice in general and that only Δ42's hypertoken means Δ42.

Everything that shapes the weights (the base weights' content hash, data bytes, the prompts,
the LoRA and optimiser settings, the seed, quantization, device, library versions) goes
into a content hash, and the trained file is cached under that hash: asking again
trains zero steps, and two pytest-xdist workers asking at once train once (a file lock).
Training is deterministic (fixed seeds, deterministic kernels, a fixed team of threads,
seeded shuffling), so the same request gives a byte-identical file. What that rests on,
precisely: the same torch, PEFT and transformers versions (in the cache key), the same
device and thread count (``threads``, default 2, in the key and in ``train_config``),
and the same CPU kernels (torch picks AVX2 or AVX-512 code by CPU; recorded as
``cpu_kernels`` in ``train_config``). OpenMP's and MKL's dynamic thread adjustment, which
would tie the thread count to the machine's load, is switched off while training.

This module knows nothing of pytest; ``plugin.py`` wraps :class:`AdapterTrainer` as the
``train_adapter`` fixture and ``cli_train.py`` wraps :func:`train` as ``scenelora train``.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import json
import math
import os
import shutil
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from .. import shipped
from ..errors import SceneloraError
from ..fsutil import (
    atomic_path,
    atomic_write_bytes,
    cache_home,
    canonical_json,
    file_lock,
    set_aside,
    sha256_bytes,
    sha256_file,
)
from ..prompts import InputMode, scene_prompt, topic_prompt
from . import adapters as fmt
from .bases import TINY, Device, Quantization
from .quiet import peft_wrapping_quietly
from .threads import fixed_team_size

if TYPE_CHECKING:
    import torch


#: Bump when the training procedure changes in a way that changes the weights; it is
#: part of every cache key, so old cached adapters are then retrained, not reused.
RECIPE_VERSION = 1

DEMO_SCENE = "Δ42"
DEMO_ROLES = ("logic", "poetic", "body", "silence")

#: Defaults sized for the tiny base on two CPU cores: the four demo adapters train in
#: under two minutes together and their registers come out clearly (measured on the
#: tiny base: at lr 2e-3 the logic/poetic margins were a third of what 8e-3 gives in the
#: same steps; at 200 steps the logic voice keeps its register on 40 of 48 topic-shift
#: samples, at 150 on 35). Real 7B-class bases want the usual LoRA rate, hence two defaults.
DEFAULT_STEPS = 200
TINY_LR = 8e-3
DEFAULT_LR = 2e-4
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 128
DEFAULT_THREADS = 2

#: Module names of input embeddings and LM heads across the model families of the presets.
EMBEDDING_MODULES = frozenset(
    {"embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out", "word_embeddings",
     "shared", "embed_positions"}
)

_WHY_NOT_EMBEDDINGS = (
    "training embeddings or the LM head is refused, because when a scene's meaning is "
    "already compressed into a hypertoken (Δ42) training them destroys it"
)


class TrainingError(SceneloraError, ValueError):
    """A training request that cannot be carried out as asked (settings, targets, base)."""


class TrainingDataError(SceneloraError, ValueError):
    """Training data is malformed; the message starts ``path:line:`` for each bad line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "no problems"
        more = len(self.problems) - 1
        if more:
            lines = ", ".join(p.split(": ", 1)[0].rsplit(":", 1)[-1] for p in self.problems[1:6])
            first += f" (and {more} more bad line{'s' if more > 1 else ''}: {lines}"
            first += ", ...)" if more > 5 else ")"
        super().__init__(first)


class TargetPreset(str, enum.Enum):
    """Where LoRA goes (never the embeddings or the LM head), mapped onto each architecture's names."""

    HYPERTOKEN = "hypertoken"  # scene given as a token: change what attention projects
    FRAGMENT = "fragment"  # scene given as text: also where it looks (q_proj)
    ATTENTION_MLP = "attention-mlp"  # plus the MLP's gate
    ALL_LINEAR = "all-linear"  # every linear layer except embeddings and the LM head


# ----------------------------------------------------------------------- architectures

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


def _embedding_module_names(model: Any) -> set[str]:
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


def _linear_leaf_names(model: Any) -> list[str]:
    """Leaf names of the linear layers LoRA can target, embeddings and LM head left out."""
    skip = _embedding_module_names(model)
    linear = _linear_types()
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, linear) and name not in skip
    }
    return sorted(leaves)


def _matches(module_name: str, target: str) -> bool:
    # PEFT's rule for a list of target names: the full name, or its dotted suffix.
    return module_name == target or module_name.endswith("." + target)


def architecture_family(model: Any) -> str:
    """The naming family of *model*'s layers, by ``config.model_type`` or by module names."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = _FAMILY_OF_MODEL_TYPE.get(model_type or "")
    if family:
        return family
    leaves = set(_linear_leaf_names(model))
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
    preset = _parse_preset(preset)
    if preset is TargetPreset.ALL_LINEAR:
        return _linear_leaf_names(model)
    return list(_PRESET_MODULES[architecture_family(model)][preset])


def _parse_preset(value: TargetPreset | str) -> TargetPreset:
    try:
        return TargetPreset(value)
    except ValueError:
        allowed = ", ".join(p.value for p in TargetPreset)
        raise TrainingError(
            f"target preset {value!r} is unknown; use one of {allowed}, or --target-modules NAMES"
        ) from None


def _refuse_embeddings(names: Sequence[str], what: str) -> None:
    bad = [n for n in names if n.rsplit(".", 1)[-1] in EMBEDDING_MODULES]
    if bad:
        raise TrainingError(
            f"{what} {bad[0]!r} is an embedding or the LM head: {_WHY_NOT_EMBEDDINGS}; "
            "target attention projections instead (--preset hypertoken), or pass "
            "--allow-embedding-training if you mean it"
        )


@dataclass(frozen=True)
class TargetPlan:
    """What LoRA attaches to on one model: module names, and PEFT's Conv1D flag."""

    target_modules: tuple[str, ...]
    fan_in_fan_out: bool


# ------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class TrainSpec:
    """One adapter to train: which scene and role, on which data and base, and how.

    ``preset=None`` picks ``hypertoken`` when the scene is given as a token and
    ``fragment`` when it is given as text; explicit ``target_modules`` win over presets.
    ``input_mode=None`` takes the scene's ``input:`` from the scenes file, and
    ``lr=None`` the learning rate for the base (:data:`TINY_LR` or :data:`DEFAULT_LR`).
    """

    scene: str
    role: str
    data: Path | None = None
    base: str = TINY
    preset: TargetPreset | None = None
    target_modules: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    r: int = 16
    alpha: float = 16
    dropout: float = 0.05
    use_rslora: bool = False
    use_dora: bool = False
    steps: int = DEFAULT_STEPS
    lr: float | None = None  # TINY_LR on the tiny base, DEFAULT_LR on any other
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = 0
    quantize: Quantization = Quantization.NONE
    device: Device = Device.AUTO
    threads: int = DEFAULT_THREADS
    input_mode: InputMode | None = None
    scenes: Path | None = None
    topics: Path | None = None
    allow_embedding_training: bool = False

    def __post_init__(self) -> None:
        put = object.__setattr__
        for name in ("scene", "role"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise TrainingError(f"{name} is {value!r}; name one, e.g. scene='Δ42', role='poetic'")
            put(self, name, fmt.normalize_name(value.strip()))
        if "_" in self.role or "/" in self.role or "/" in self.scene:
            raise TrainingError(
                f"role {self.role!r} / scene {self.scene!r}: a role holds no '_' and neither "
                "holds '/', because the adapter file is named <scene>_<role>.safetensors"
            )
        if self.preset is not None:
            put(self, "preset", _parse_preset(self.preset))
        if isinstance(self.target_modules, str):
            put(self, "target_modules", (self.target_modules,))
        if isinstance(self.modules_to_save, str):
            put(self, "modules_to_save", (self.modules_to_save,))
        put(self, "target_modules", tuple(m.strip() for m in self.target_modules if m.strip()))
        put(self, "modules_to_save", tuple(m.strip() for m in self.modules_to_save if m.strip()))
        if self.preset is not None and self.target_modules:
            raise TrainingError(
                f"both a preset ({self.preset.value!r}) and target modules "
                f"({', '.join(self.target_modules)}) were given; pass one of them"
            )
        for name in ("data", "scenes", "topics"):
            value = getattr(self, name)
            if value is not None:
                put(self, name, Path(value))
        choices: tuple[tuple[str, type[enum.Enum]], ...] = (
            ("quantize", Quantization), ("device", Device), ("input_mode", InputMode))
        for name, choice in choices:
            value = getattr(self, name)
            if value is None:
                continue
            try:
                put(self, name, choice(value))
            except ValueError:
                allowed = ", ".join(m.value for m in choice)
                raise TrainingError(f"{name}={value!r} is not one of {allowed}") from None
        if self.lr is None:
            put(self, "lr", TINY_LR if self.base == TINY else DEFAULT_LR)
        self._check_ranges()
        if not self.allow_embedding_training:
            _refuse_embeddings(self.target_modules, "target module")
            _refuse_embeddings(self.modules_to_save, "modules_to_save entry")

    def _check_ranges(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise TrainingError(message)

        need(isinstance(self.r, int) and self.r > 0, f"r={self.r!r}: the LoRA rank must be a positive "
             "integer (16 or 32 are usual)")
        need(self.alpha > 0, f"alpha={self.alpha!r}: must be positive (16 is usual)")
        need(0 <= self.dropout < 1, f"dropout={self.dropout!r}: must be in [0, 1)")
        need(isinstance(self.steps, int) and self.steps >= 1, f"steps={self.steps!r}: train at least 1 step")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr={self.lr!r}: must be a positive number")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size={self.batch_size!r}: must be at least 1")
        need(isinstance(self.max_length, int) and self.max_length >= 8,
             f"max_length={self.max_length!r}: must be at least 8 tokens")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed={self.seed!r}: must be 0 or more")
        need(isinstance(self.threads, int) and self.threads >= 1, f"threads={self.threads!r}: at least 1")

    @property
    def name(self) -> str:
        """The adapter's name: ``<scene>_<role>``."""
        return f"{self.scene}_{self.role}"

    @property
    def data_path(self) -> Path:
        return self.data if self.data is not None else shipped.training_data_file()

    def hyperparameters(self) -> dict[str, Any]:
        """Everything in the spec that shapes the weights, as plain JSON (no paths)."""
        raw = asdict(self)
        for path_field in ("data", "scenes", "topics", "base"):
            raw.pop(path_field)
        raw["preset"] = self.preset.value if self.preset else None
        raw["quantize"] = self.quantize.value
        raw["device"] = self.device.value
        raw["input_mode"] = self.input_mode.value if self.input_mode else None
        raw["target_modules"] = list(self.target_modules)
        raw["modules_to_save"] = list(self.modules_to_save)
        return raw


# ------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    """One training line: a target text in a role, about a scene or a topic."""

    role: str
    text: str
    source: str  # "path:line", for messages
    scene: str | None = None
    topic: str | None = None
    prompt: str | None = None


_EXAMPLE_KEYS = ("scene", "topic", "role", "text", "prompt")


def read_examples(path: str | os.PathLike[str]) -> list[Example]:
    """Parse a JSONL training file, one example a line; every bad line is reported.

    A line holds ``role`` and ``text``, and ``scene`` or ``topic`` (or an explicit
    ``prompt``). Blank lines are skipped. Problems are collected so that one run names
    them all, each as ``path:line: what is wrong``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TrainingDataError([f"{path}: no such training data file; pass --data PATH"]) from None
    except OSError as exc:
        raise TrainingDataError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    examples: list[Example] = []
    problems: list[str] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{where}: not UTF-8 text; save the file as UTF-8")
            continue
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); write one "
                            'object a line, e.g. {"scene": "Δ42", "role": "poetic", "text": "..."}')
            continue
        problem = _check_record(record)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        examples.append(Example(
            role=fmt.normalize_name(record["role"].strip()),
            text=record["text"].strip(),
            source=where,
            scene=fmt.normalize_name(str(record["scene"]).strip()) if "scene" in record else None,
            topic=str(record["topic"]).strip() if "topic" in record else None,
            prompt=record.get("prompt"),
        ))
    if problems:
        raise TrainingDataError(problems)
    if not examples:
        raise TrainingDataError([f"{path}: holds no examples; write one JSON object a line"])
    return examples


def _check_record(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"a line must be a JSON object, not {type(record).__name__}"
    for key in record:
        if key not in _EXAMPLE_KEYS:
            close = difflib.get_close_matches(str(key), _EXAMPLE_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(_EXAMPLE_KEYS)}"
            return f"unknown key {key!r}; {hint}"
    for key in ("role", "text"):
        if key not in record:
            return f"no {key!r}; every example needs a role and a text"
        if not isinstance(record[key], str) or not record[key].strip():
            return f"{key!r} must be non-empty text, not {record[key]!r}"
    if "_" in record["role"]:
        return f"role {record['role']!r} holds '_', which adapter names use to split scene from role"
    for key in ("scene", "topic"):
        if key in record and (not isinstance(record[key], str | int) or not str(record[key]).strip()):
            return f"{key!r} must be a non-empty id, not {record[key]!r}"
    if "scene" in record and "topic" in record:
        return "a line has both 'scene' and 'topic'; an example is about one of them"
    if "prompt" in record and (not isinstance(record["prompt"], str) or not record["prompt"].strip()):
        return f"'prompt' must be non-empty text, not {record['prompt']!r}; or leave it out"
    if not any(k in record for k in ("scene", "topic", "prompt")):
        return "no 'scene', 'topic' or 'prompt'; say what the text is about"
    return None


@dataclass(frozen=True)
class TrainingSet:
    """The rendered (prompt, text) pairs one adapter trains on, with their provenance."""

    pairs: tuple[tuple[str, str], ...]
    data_sha256: str
    input_mode: InputMode

    @property
    def key(self) -> str:
        return sha256_bytes(canonical_json([list(p) for p in self.pairs]))


def _header(prompt: str) -> str:
    # A prompt is a header line (as in the base's corpus); keep the text on its own line.
    return prompt if prompt.endswith(("\n", " ")) else prompt + "\n"


def build_training_set(spec: TrainSpec) -> TrainingSet:
    """Select the examples of ``spec.role`` and give each its prompt (DESIGN "Training data")."""
    from ..scenes import Split, load_scenes, load_topics

    data = spec.data_path
    examples = read_examples(data)
    roles = sorted({e.role for e in examples})
    chosen = [e for e in examples if e.role == spec.role]
    if not chosen:
        close = difflib.get_close_matches(spec.role, roles, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"its roles are {', '.join(roles)}"
        raise TrainingDataError([f"{data}: no examples in role {spec.role!r}; {hint}"])
    if not any(e.scene == spec.scene for e in chosen):
        scenes = sorted({e.scene for e in chosen if e.scene})
        raise TrainingDataError([
            f"{data}: no examples of scene {spec.scene!r} in role {spec.role!r}, so the adapter "
            f"could never learn what {spec.scene} means; its scenes are {', '.join(scenes) or 'none'}"
        ])

    scenes_path = spec.scenes if spec.scenes is not None else shipped.scenes_file()
    topics_path = spec.topics if spec.topics is not None else shipped.topics_file()
    scene_set = load_scenes(scenes_path)
    topics = load_topics(topics_path) if any(e.topic and not e.prompt for e in chosen) else {}
    mode = spec.input_mode or (scene_set.scenes[spec.scene].input if spec.scene in scene_set
                               else InputMode.TOKEN)
    problems: list[str] = []

    # Unseen scenes must stay unseen: refuse them anywhere in the file, not just this role.
    unseen = {s.id for s in scene_set.split(Split.UNSEEN)}
    for e in examples:
        if e.scene in unseen:
            problems.append(f"{e.source}: scene {e.scene!r} is marked `split: unseen` in "
                                f"{scenes_path}, so no training data may hold it; remove the line "
                                "or mark the scene `split: train`")

    pairs: list[tuple[str, str]] = []
    for e in chosen:
        if e.prompt:
            prompt = _header(e.prompt)
        elif e.scene is not None:
            if e.scene not in scene_set:
                close = difflib.get_close_matches(e.scene, list(scene_set.scenes), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "add it there or give the line a 'prompt'"
                problems.append(f"{e.source}: scene {e.scene!r} is not in {scenes_path}; {hint}")
                continue
            scene = scene_set.scenes[e.scene]
            own = e.scene == spec.scene
            prompt = scene_prompt(scene.id, scene.core, mode if own else InputMode.FRAGMENT)
        else:
            topic = topics.get(e.topic or "")
            if topic is None:
                close = difflib.get_close_matches(e.topic or "", list(topics), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "add it there or give the line a 'prompt'"
                problems.append(f"{e.source}: topic {e.topic!r} is not in {topics_path}; {hint}")
                continue
            prompt = topic_prompt(topic.description)
        pairs.append((prompt, e.text))
    if problems:
        raise TrainingDataError(problems)
    return TrainingSet(pairs=tuple(pairs), data_sha256=sha256_file(data), input_mode=mode)


def tokenize_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
                   ) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per pair: ``prompt + text + eos``, loss on text and eos only."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainingError("the base's tokenizer has no eos token; cannot mark where a text ends")
    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    texts = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    rows = []
    for prompt_ids, text_ids in zip(prompts, texts, strict=True):
        ids = (list(prompt_ids) + list(text_ids) + [eos])[:max_length]
        labels = ([-100] * len(prompt_ids) + list(text_ids) + [eos])[:max_length]
        rows.append((ids, labels))
    return rows


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad right (training), with -100 labels and a zero attention mask on the padding."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded shuffles of ``range(n)``, cut into batches (a short last one dropped)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


# ---------------------------------------------------------------------------- progress


class TrainProgress(Protocol):
    """Where training reports: a rich bar on a terminal, log lines otherwise, or nothing."""

    def start(self, name: str, total: int) -> None: ...

    def update(self, step: int, loss: float) -> None: ...

    def finish(self) -> None: ...


class PlainProgress:
    """Log lines: the first step, about ten more per adapter, and one at least every *every_s*."""

    def __init__(self, stream: IO[str] | None = None, lines: int = 10, every_s: float = 10.0) -> None:
        self.stream = stream
        self.lines = lines
        self.every_s = every_s

    def start(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.started = self.last = time.perf_counter()
        self.every = max(1, total // self.lines)

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        due = step == 1 or step % self.every == 0 or step == self.total
        if not due and now - self.last < self.every_s:
            return
        self.last = now
        rate = step / max(now - self.started, 1e-9)
        eta = (self.total - step) / rate
        print(f"{self.name}: step {step}/{self.total} loss {loss:.4f} "
              f"{rate:.1f} steps/s eta {eta:.0f}s", file=self.stream or sys.stderr, flush=True)

    def finish(self) -> None:
        return None


class RichProgress:
    """A rich progress bar: loss, steps per second and time remaining."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._bar: Any = None

    def start(self, name: str, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}", markup=False),  # an adapter name, not markup
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} steps/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(name, total=total, loss="-", rate="-")
        self._started = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        rate = step / max(time.perf_counter() - self._started, 1e-9)
        self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", rate=f"{rate:.1f}")

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_for(mode: str = "auto", stream: IO[str] | None = None) -> TrainProgress | None:
    """``auto``: a rich bar when *stream* is a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if mode == "none":
        return None
    if mode == "rich" or (mode == "auto" and stream.isatty()):
        from rich.console import Console

        return RichProgress(Console(file=stream))
    return PlainProgress(stream)


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainResult:
    """A trained (or reused) adapter: where it is, what it is, and what it cost."""

    path: Path
    info: fmt.AdapterInfo
    steps_trained: int
    reused_cache: bool
    seconds: float
    final_loss: float | None
    cache_path: Path
    key: str

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.info.metadata

    def summary(self) -> str:
        """The one line ``scenelora train`` prints for this adapter."""
        if self.reused_cache:
            return f"reused cached adapter {self.path}"
        loss = f", final loss {self.final_loss:.4f}" if self.final_loss is not None else ""
        return f"trained {self.name} in {self.steps_trained} steps ({self.seconds:.1f}s{loss}): {self.path}"


@contextlib.contextmanager
def deterministic_torch(threads: int, device: str) -> Iterator[None]:
    """Deterministic kernels and a fixed team of *threads* threads inside the block; restored after.

    ``torch.set_num_threads`` sets the most threads, not the number used: with OpenMP's
    dynamic adjustment on (``OMP_DYNAMIC=true``; libgomp then sizes each team from the
    system's load average) or MKL's (``MKL_DYNAMIC``, on unless set false), a loaded
    machine runs some kernels on fewer threads. Reductions are then split differently
    and the weights come out different in the last bits while the loss agrees to many
    decimals; reproduced here with ``OMP_DYNAMIC=true`` under load. Both adjustments are
    switched off for the block, as Intel's conditions for run-to-run reproducibility ask.
    """
    import torch

    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device == "cuda":
        # cuBLAS needs this to be deterministic; it only takes effect before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device == "cuda")
    try:
        with fixed_team_size():
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)


def cache_key(spec: TrainSpec, base_content: str, training_set: TrainingSet, device: str) -> str:
    """The content hash an adapter is cached under (no paths: content only). *base_content*
    is :func:`~.models.weights_hash`: a base retrained with the same shapes is another base."""
    hyper = spec.hyperparameters()
    hyper["device"] = device
    hyper["input_mode"] = training_set.input_mode.value
    return sha256_bytes(
        f"scenelora-adapter-v{RECIPE_VERSION}",
        base_content,
        training_set.data_sha256,
        training_set.key,
        canonical_json(hyper),
        fmt.created_with(),
    )


def adapter_cache_dir(key: str) -> Path:
    return cache_home() / "adapters" / key[:32]


def _resolve_targets(spec: TrainSpec, model: Any, mode: InputMode) -> TargetPlan:
    from transformers.pytorch_utils import Conv1D

    if spec.target_modules:
        targets = list(spec.target_modules)
    else:
        preset = spec.preset or (TargetPreset.HYPERTOKEN if mode is InputMode.TOKEN
                                 else TargetPreset.FRAGMENT)
        targets = target_modules_for(preset, model)
    names = [name for name, _ in model.named_modules()]
    embedding_names = _embedding_module_names(model)
    for target in targets:
        hits = [n for n in names if _matches(n, target)]
        if not hits:
            leaves = ", ".join(_linear_leaf_names(model))
            raise TrainingError(
                f"target module {target!r} is not in base {spec.base!r} "
                f"({getattr(model.config, 'model_type', '?')}); its linear layers are: {leaves}"
            )
        if not spec.allow_embedding_training and any(h in embedding_names for h in hits):
            raise TrainingError(
                f"target module {target!r} is the base's embedding or LM head: {_WHY_NOT_EMBEDDINGS}; "
                "target attention projections instead (--preset hypertoken), or pass "
                "--allow-embedding-training if you mean it"
            )
    for target in spec.modules_to_save:
        hits = [n for n in names if _matches(n, target)]
        if not hits:
            raise TrainingError(f"modules_to_save entry {target!r} is not a module of base {spec.base!r}")
        if not spec.allow_embedding_training and any(h in embedding_names for h in hits):
            raise TrainingError(
                f"modules_to_save entry {target!r} is the base's embedding or LM head: "
                f"{_WHY_NOT_EMBEDDINGS}; pass --allow-embedding-training if you mean it"
            )
    fused = any(
        isinstance(module, Conv1D) and any(_matches(name, t) for t in targets)
        for name, module in model.named_modules()
    )
    return TargetPlan(target_modules=tuple(targets), fan_in_fan_out=fused)


def _lora_config(spec: TrainSpec, plan: TargetPlan) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(plan.target_modules),
        modules_to_save=list(spec.modules_to_save) or None,
        fan_in_fan_out=plan.fan_in_fan_out,
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        bias="none",
    )


@contextlib.contextmanager
def _hf_progress_bars_off() -> Iterator[None]:
    """No "Loading weights" bar from transformers: training reports its own progress."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass
class _Trained:
    tensors: dict[str, Any]
    config: dict[str, Any]
    final_loss: float
    steps: int


def _run_training(spec: TrainSpec, training_set: TrainingSet, base: Any,
                  progress: TrainProgress | None) -> _Trained:
    import torch
    from peft import get_peft_model, get_peft_model_state_dict, prepare_model_for_kbit_training

    model, tokenizer = base.model, base.tokenizer
    plan = _resolve_targets(spec, model, training_set.input_mode)
    if spec.quantize is not Quantization.NONE:
        model.config.use_cache = False  # gradient checkpointing cannot use the KV cache
        # QLoRA: norms to fp32, input grads on, gradient checkpointing to save memory.
        with peft_wrapping_quietly():
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=True,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
    torch.manual_seed(spec.seed)  # LoRA A init and dropout masks
    with peft_wrapping_quietly():
        peft_model = get_peft_model(model, _lora_config(spec, plan))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    warmup = max(1, min(20, spec.steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, spec.steps, warmup)
    )
    rows = tokenize_pairs(tokenizer, training_set.pairs, spec.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(p for p in peft_model.parameters()).device
    order = batches(len(rows), spec.batch_size, spec.seed)
    loss_value = float("nan")
    if progress:
        progress.start(spec.name, spec.steps)
    try:
        for step in range(1, spec.steps + 1):
            batch = collate([rows[i] for i in next(order)], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = peft_model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.detach().item()
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"{spec.name}: the loss became {loss_value} at step {step}; "
                    f"the training diverged: lower the learning rate (lr={spec.lr})"
                )
            if progress:
                progress.update(step, loss_value)
    finally:
        if progress:
            progress.finish()
    peft_model.eval()
    tensors = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    config = fmt.config_to_dict(peft_model.peft_config["default"])
    config["base_model_name_or_path"] = spec.base
    config["inference_mode"] = True
    return _Trained(tensors=tensors, config=config, final_loss=loss_value, steps=spec.steps)


def canonicalize_header(path: Path) -> None:
    """Rewrite a safetensors file's header with its keys sorted, atomically.

    safetensors keeps ``__metadata__`` in a Rust ``HashMap``, whose order changes from
    one process to the next, so the same tensors and metadata give different bytes.
    Sorting the header is what makes the same training give a byte-identical file.
    The tensor data is untouched (its offsets are relative to the end of the header).
    """
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    canonical = struct.pack("<Q", len(text)) + text + raw[8 + size :]
    if canonical != raw:
        atomic_write_bytes(Path(path), canonical)


_STAGING = "staging"


def _clear_stale_temps(directory: Path, name: str) -> None:
    # We hold the key's lock, so anything half-written here is from a killed process.
    for stale in [*directory.glob(f".{name}.*.tmp"), *(directory / _STAGING).glob("*")]:
        with contextlib.suppress(OSError):
            stale.unlink()


def _readable(path: Path) -> fmt.AdapterInfo | None:
    """The cached adapter at *path*, or None when there is none or it cannot be read."""
    return _read_cached(path)[0]


def _read_cached(path: Path) -> tuple[fmt.AdapterInfo | None, str | None]:
    """(the cached adapter, None), (None, None) when absent, or (None, what is wrong with it).

    The file is our own cache entry, so whatever stops it from being read (a truncated
    or overwritten file, a header the reader refuses) means it is damaged, never that
    the request is wrong: it is set aside and the adapter trained again.
    """
    if not path.is_file():
        return None, None
    try:
        return fmt.read_adapter(path), None
    except Exception as exc:  # any failure to read our own cache entry is damage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"the cached adapter cannot be read ({first[:200]})"


def _publish(cached: Path, out_dir: Path | None) -> Path:
    """Copy the cached file into *out_dir* atomically (or hand back the cache path)."""
    if out_dir is None:
        return cached
    target = Path(out_dir) / cached.name
    if target.is_file() and sha256_file(target) == sha256_file(cached):
        return target
    with atomic_path(target) as tmp:
        shutil.copyfile(cached, tmp)
    return target


def train(
    spec: TrainSpec,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    cache: bool = True,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Train the adapter *spec* describes (or reuse the cached one) into *out_dir*.

    Writes ``<out_dir>/<scene>_<role>.safetensors`` atomically, with the DESIGN metadata
    (base fingerprint, ``train_data_sha256``, the training settings). ``cache=False``
    trains even when a cached adapter exists, and refreshes the cache with the result.
    With ``out_dir=None`` the result's path is the file in the cache.
    """
    from .bases import fingerprint, load_base, pick_device, resolve_base, weights_hash

    started = time.perf_counter()
    training_set = build_training_set(spec)  # data errors first: they are the cheapest to find
    base_dir = resolve_base(spec.base)
    base_fp = fingerprint(base_dir)
    device = pick_device(spec.device)
    key = cache_key(spec, weights_hash(base_dir), training_set, device)
    cached = adapter_cache_dir(key) / f"{spec.name}{fmt.SUFFIX}"

    def finish(steps: int, loss: float | None, reused: bool) -> TrainResult:
        path = _publish(cached, Path(out_dir) if out_dir is not None else None)
        return TrainResult(path=path, info=fmt.read_adapter(path), steps_trained=steps,
                           reused_cache=reused, seconds=time.perf_counter() - started,
                           final_loss=loss, cache_path=cached, key=key)

    if cache and (info := _readable(cached)) is not None:
        return finish(0, _recorded_loss(info), True)
    with file_lock(cached):
        info, damage = _read_cached(cached)
        if cache and info is not None:  # another process trained it
            return finish(0, _recorded_loss(info), True)
        if damage is not None:
            set_aside(cached, damage)
        _clear_stale_temps(cached.parent, cached.name)
        with deterministic_torch(spec.threads, device):
            with _hf_progress_bars_off():
                base = load_base(spec.base, device=spec.device, quantize=spec.quantize)
            trained = _run_training(spec, training_set, base, progress)
        # Write and canonicalize beside the cache entry, then rename: a reader never sees
        # the file before its bytes are final.
        staging = cached.parent / _STAGING / cached.name
        fmt.save_adapter_file(
            staging, trained.tensors, trained.config,
            scene=spec.scene, role=spec.role, base_model=spec.base, base_fingerprint=base_fp,
            train_data_sha256=training_set.data_sha256,
            extra={"train_config": canonical_json({**spec.hyperparameters(), "device": device,
                                                   "input_mode": training_set.input_mode.value,
                                                   "examples": len(training_set.pairs),
                                                   "cpu_kernels": _cpu_kernels()}),
                   "train_final_loss": f"{trained.final_loss:.6f}",
                   "train_recipe": str(RECIPE_VERSION)},
        )
        canonicalize_header(staging)
        os.replace(staging, cached)
        _log_build(cached, spec, trained, time.perf_counter() - started)
    return finish(trained.steps, trained.final_loss, False)


def _cpu_kernels() -> str:
    """Which vectorised CPU code torch runs (``AVX512``, ``AVX2``, ``DEFAULT``...): results
    differ in the last bits between them, so an adapter says which one made it."""
    import torch

    with contextlib.suppress(AttributeError, RuntimeError):
        return str(torch.backends.cpu.get_cpu_capability())
    return "unknown"


def _recorded_loss(info: fmt.AdapterInfo) -> float | None:
    try:
        return float(info.metadata["train_final_loss"])
    except (KeyError, ValueError):
        return None


def _log_build(cached: Path, spec: TrainSpec, trained: _Trained, seconds: float) -> None:
    """One JSON line per training run in the key's folder: how often it was really trained."""
    line = canonical_json({"adapter": spec.name, "steps": trained.steps, "pid": os.getpid(),
                           "seconds": round(seconds, 3), "final_loss": round(trained.final_loss, 6)})
    with open(cached.parent / "builds.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def build_count(result: TrainResult) -> int:
    """How many times the adapter under *result*'s cache key has actually been trained."""
    log = result.cache_path.parent / "builds.jsonl"
    if not log.is_file():
        return 0
    return sum(1 for line in log.read_text(encoding="utf-8").splitlines() if line.strip())


# ------------------------------------------------------------------------------ library


def train_demo_library(
    out_dir: str | os.PathLike[str],
    base: str = TINY,
    progress: TrainProgress | None = None,
    *,
    cache: bool = True,
    **overrides: Any,
) -> list[TrainResult]:
    """Train (or reuse) the demo library: scene Δ42 in its four roles, into *out_dir*."""
    return [
        train(TrainSpec(scene=DEMO_SCENE, role=role, base=base, **overrides), out_dir,
              cache=cache, progress=progress)
        for role in DEMO_ROLES
    ]


@dataclass
class AdapterTrainer:
    """The ``train_adapter`` fixture's engine: train-or-reuse on one base, with the cache.

    Call it as ``trainer(scene="Δ42", role="poetic", steps=30, r=8)``; it returns a
    :class:`TrainResult` (``.path``, ``.info``, ``.metadata``). The cache and its file
    lock make concurrent pytest-xdist workers train each adapter once.
    """

    base: str = TINY
    device: Device | str = Device.AUTO
    quantize: Quantization | str = Quantization.NONE
    out_dir: Path | None = None
    progress: TrainProgress | None = None
    results: list[TrainResult] = field(default_factory=list)

    def __call__(
        self,
        scene: str = DEMO_SCENE,
        role: str = "poetic",
        data: str | os.PathLike[str] | None = None,
        preset: TargetPreset | str | None = None,
        steps: int | None = None,
        *,
        progress: TrainProgress | bool | None = None,
        **lora: Any,
    ) -> TrainResult:
        """Train-or-reuse ``<scene>_<role>``; *lora* are :class:`TrainSpec` fields.

        Silent by default (tests run under capture); ``progress=True`` logs plain lines
        to stderr, or pass any :class:`TrainProgress`.
        """
        spec_fields = {"base": self.base, "device": self.device, "quantize": self.quantize, **lora}
        if steps is not None:
            spec_fields["steps"] = steps
        unknown = set(spec_fields) - set(TrainSpec.__dataclass_fields__)
        if unknown:
            known = ", ".join(sorted(set(TrainSpec.__dataclass_fields__) - {"scene", "role"}))
            raise TrainingError(f"train_adapter got unknown setting(s) {', '.join(sorted(unknown))}; "
                                f"the settings are {known}")
        spec = TrainSpec(scene=scene, role=role, data=Path(data) if data is not None else None,
                         preset=preset, **spec_fields)
        reporter = PlainProgress() if progress is True else (progress or self.progress)
        out = train(spec, self.out_dir, cache=True, progress=reporter)
        self.results.append(out)
        return out


__all__ = [
    "DEMO_ROLES",
    "DEMO_SCENE",
    "AdapterTrainer",
    "Example",
    "PlainProgress",
    "RichProgress",
    "TargetPreset",
    "TrainProgress",
    "TrainResult",
    "TrainSpec",
    "TrainingDataError",
    "TrainingError",
    "build_training_set",
    "cache_key",
    "progress_for",
    "read_examples",
    "target_modules_for",
    "train",
    "train_demo_library",
]
