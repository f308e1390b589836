"""One adapter to train (:class:`TrainSpec`): scene, role, data, base and settings, validated
when made; and the defaults."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ... import shipped
from ...errors import TrainingError
from ...prompts import InputMode
from .. import adapters as adapter_files
from ..bases import TINY, Device, Quantization
from ..chat import PromptFormat
from .targets import TargetPreset, parse_preset, refuse_embeddings

#: Bump when the training procedure changes in a way that changes the weights; it is
#: part of every cache key, so old cached adapters are then retrained, not reused.
RECIPE_VERSION = 2
# 2: the loss projects the LM head only where there is a label (engine/training/loss.py):
#    the same loss, summed in another order, so the weights differ in the last bits.


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


def base_recipe(base: str) -> dict[str, Any]:
    """Steps, learning rate and batch size a voice trains with on *base* unless told: the
    tiny base's, a preset's measured recipe (``smollm2-135m``: 30 steps of 8 rows at 4e-3,
    see ``benchmarks/bench_real_base.py``), or the usual LoRA rate for any other base."""
    from ..gguf import GGUF_PRESETS

    recipe: dict[str, Any] = {"steps": DEFAULT_STEPS, "batch_size": DEFAULT_BATCH_SIZE,
                              "lr": TINY_LR if base == TINY else DEFAULT_LR}
    preset = GGUF_PRESETS.get(str(base))
    if preset is not None:
        recipe.update(preset.train_recipe)
    return recipe


def recipe_origin(base: str, steps: int, batch_size: int, lr: float) -> str:
    """Where a voice's steps, batch size and learning rate came from, in words: the base's
    recipe, and which of them were given instead. Recorded in the adapter's metadata
    (``train_recipe_from``), so a voice trained otherwise than its base's recipe says so."""
    from ..gguf import GGUF_PRESETS

    given = {"steps": steps, "batch_size": batch_size, "lr": lr}
    own = base_recipe(base)
    told = [k for k in given if given[k] != own[k]]
    if str(base) in GGUF_PRESETS:
        source = f"preset {base}'s recipe"
    else:
        source = "the tiny base's defaults" if base == TINY else "the defaults for any base"
    if not told:
        return source
    return f"{source}; given: " + ", ".join(f"{k}={given[k]}" for k in told)


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
    steps: int | None = None  # the base's recipe (base_recipe)
    lr: float | None = None  # the base's recipe: TINY_LR on the tiny base, DEFAULT_LR on most others
    batch_size: int | None = None  # the base's recipe
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = 0
    quantize: Quantization = Quantization.NONE
    device: Device = Device.AUTO
    threads: int = DEFAULT_THREADS
    input_mode: InputMode | None = None
    scenes: Path | None = None
    topics: Path | None = None
    allow_embedding_training: bool = False
    prompt_format: PromptFormat = PromptFormat.PLAIN  # plain, chat (the base's template) or auto

    def __post_init__(self) -> None:
        put = object.__setattr__
        for name in ("scene", "role"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise TrainingError(f"{name} is {value!r}; name one, e.g. scene='Δ42', role='poetic'")
            put(self, name, adapter_files.normalize_name(value.strip()))
        if "_" in self.role or "/" in self.role or "/" in self.scene:
            raise TrainingError(
                f"role {self.role!r} / scene {self.scene!r}: a role holds no '_' and neither "
                "holds '/', because the adapter file is named <scene>_<role>.safetensors"
            )
        if self.preset is not None:
            put(self, "preset", parse_preset(self.preset))
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
            ("quantize", Quantization), ("device", Device), ("input_mode", InputMode),
            ("prompt_format", PromptFormat))
        for name, choice in choices:
            value = getattr(self, name)
            if value is None:
                continue
            try:
                put(self, name, choice(value))
            except ValueError:
                allowed = ", ".join(m.value for m in choice)
                raise TrainingError(f"{name}={value!r} is not one of {allowed}") from None
        recipe = base_recipe(self.base)
        for name in ("steps", "lr", "batch_size"):
            if getattr(self, name) is None:
                put(self, name, recipe[name])
        self._check_ranges()
        if not self.allow_embedding_training:
            refuse_embeddings(self.target_modules, "target module")
            refuse_embeddings(self.modules_to_save, "modules_to_save entry")

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
    def recipe_origin(self) -> str:
        """Where :attr:`steps`, :attr:`batch_size` and :attr:`lr` came from (:func:`recipe_origin`)."""
        return recipe_origin(self.base, self.steps, self.batch_size, self.lr)

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
        # plain prompts leave the key as it was before prompt formats existed: cached voices stay valid
        if self.prompt_format is PromptFormat.PLAIN:
            raw.pop("prompt_format")
        else:
            raw["prompt_format"] = self.prompt_format.value
        return raw
