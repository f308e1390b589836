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

The package, one module per stage: :mod:`.targets` (where LoRA goes in each architecture),
:mod:`.spec` (one adapter to train, and the defaults), :mod:`.data` (the training set),
:mod:`.loop` (the deterministic training loop) and :mod:`.store` (the content-keyed cache
and publishing the file). It knows nothing of pytest; ``plugin.py`` wraps :class:`AdapterTrainer` as the
``train_adapter`` fixture and ``cli/train.py`` wraps :func:`train` as ``scenelora train``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import TrainingDataError, TrainingError
from ..bases import TINY, Device, Quantization
from ..progress import LineProgress, Progress, progress_for
from .data import Example, build_training_set, read_examples, tokenize_pairs
from .loop import deterministic_torch
from .spec import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_MAX_LENGTH,
    DEFAULT_STEPS,
    DEFAULT_THREADS,
    DEMO_ROLES,
    DEMO_SCENE,
    RECIPE_VERSION,
    TINY_LR,
    TrainSpec,
)
from .store import TrainResult, build_count, cache_key, train
from .targets import TargetPreset, architecture_family, target_modules_for


def train_demo_library(
    out_dir: str | os.PathLike[str],
    base: str = TINY,
    progress: Progress | None = None,
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
    progress: Progress | None = None
    prompt_format: str = "plain"  # the session's --prompt-format: voices trained as they are tested
    results: list[TrainResult] = field(default_factory=list)

    def __call__(
        self,
        scene: str = DEMO_SCENE,
        role: str = "poetic",
        data: str | os.PathLike[str] | None = None,
        preset: TargetPreset | str | None = None,
        steps: int | None = None,
        *,
        progress: Progress | bool | None = None,
        **lora: Any,
    ) -> TrainResult:
        """Train-or-reuse ``<scene>_<role>``; *lora* are :class:`TrainSpec` fields.

        Silent by default (tests run under capture); ``progress=True`` logs plain lines
        to stderr, or pass any :data:`~..progress.Progress`.
        """
        spec_fields = {"base": self.base, "device": self.device, "quantize": self.quantize,
                       "prompt_format": self.prompt_format, **lora}
        if steps is not None:
            spec_fields["steps"] = steps
        unknown = set(spec_fields) - set(TrainSpec.__dataclass_fields__)
        if unknown:
            known = ", ".join(sorted(set(TrainSpec.__dataclass_fields__) - {"scene", "role"}))
            raise TrainingError(f"train_adapter got unknown setting(s) {', '.join(sorted(unknown))}; "
                                f"the settings are {known}")
        spec = TrainSpec(scene=scene, role=role, data=Path(data) if data is not None else None,
                         preset=preset, **spec_fields)
        reporter = LineProgress() if progress is True else (progress or self.progress)
        out = train(spec, self.out_dir, cache=True, progress=reporter)
        self.results.append(out)
        return out


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LR",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_STEPS",
    "DEFAULT_THREADS",
    "DEMO_ROLES",
    "DEMO_SCENE",
    "RECIPE_VERSION",
    "TINY_LR",
    "AdapterTrainer",
    "Example",
    "LineProgress",
    "Progress",
    "TargetPreset",
    "TrainResult",
    "TrainSpec",
    "TrainingDataError",
    "TrainingError",
    "architecture_family",
    "build_count",
    "build_training_set",
    "cache_key",
    "deterministic_torch",
    "progress_for",
    "read_examples",
    "target_modules_for",
    "tokenize_pairs",
    "train",
    "train_demo_library",
]
