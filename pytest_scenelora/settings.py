"""Command-line and ini options, resolved once into a frozen, validated record."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine.bases import TINY, Device, Quantization
from .engine.chat import PromptFormat


def _choice(enum_type: type, what: str):
    def parse(value: str) -> str:
        try:
            return enum_type(value).value
        except ValueError:
            allowed = "|".join(m.value for m in enum_type)
            raise argparse.ArgumentTypeError(f"{value!r} is not a {what}; use {allowed}") from None

    return parse


parse_device = _choice(Device, "device")


def _one_of(allowed: tuple[str, ...], what: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {what}; use {'|'.join(allowed)}")
        return value

    return parse


#: ``--scenelora-multiplicity``: the values of :class:`~.scoring.multiplicity.Multiplicity`,
#: spelt out here so that reading options imports no numerical code.
MULTIPLICITY = ("none", "holm", "bh")
#: ``--scenelora-regression``: the values of :class:`~.reporting.baseline.Framing`.
REGRESSION = ("drop", "non-inferiority")
parse_multiplicity = _one_of(MULTIPLICITY, "multiplicity adjustment")
parse_switch = _one_of(("on", "off"), "switch")
parse_regression = _one_of(REGRESSION, "regression framing")
parse_quantization = _choice(Quantization, "quantization")
parse_prompt_format = _choice(PromptFormat, "prompt format")


def number_parser(kind: type[int] | type[float], ok: Callable[[float], bool], requirement: str
                  ) -> Callable[[str], Any]:
    """An argparse ``type=`` for an int or float meeting *ok*; otherwise one line saying
    what the value is not (a number at all, or *requirement*)."""
    what = "an integer" if kind is int else "a finite number"

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        # float() takes "nan" and "inf"; no option means them
        if kind is float and not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        if not ok(number):
            raise argparse.ArgumentTypeError(f"{value!r} {requirement}")
        return number

    return parse


#: Seeds reach torch, numpy and Hypothesis; torch takes at most 64 bits, so the range is the
#: usual 32-bit one, which every one of them takes.
MAX_SEED = 2**32 - 1
_seed_number = number_parser(int, lambda n: n >= 0, f"is negative; seeds are 0 to {MAX_SEED}")


def parse_seed(value: str) -> int:
    """An argparse ``type=`` for a seed: a whole number from 0 to :data:`MAX_SEED`."""
    seed = _seed_number(value)
    if seed > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value!r} is too large; seeds are 0 to {MAX_SEED}")
    return seed


@dataclass(frozen=True)
class Settings:
    """Everything a scenelora session was asked to do; validated on creation."""

    adapters: tuple[str, ...] = ()
    base_model: str = TINY
    device: Device = Device.AUTO
    quantize: Quantization = Quantization.NONE
    seed: int = 0
    embedder: str | None = None
    json_path: str | None = None  # --scenelora-json
    html_path: str | None = None  # --scenelora-html
    baseline_path: str | None = None  # --scenelora-baseline
    update_baseline: bool = False  # --scenelora-update-baseline
    prompt_format: PromptFormat = PromptFormat.PLAIN  # --prompt-format
    multiplicity: str = "none"  # --scenelora-multiplicity: one of MULTIPLICITY
    regression: str = "drop"  # --scenelora-regression: one of REGRESSION
    sequential: bool = True  # --scenelora-sequential on|off

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", Device(self.device))
        object.__setattr__(self, "quantize", Quantization(self.quantize))
        object.__setattr__(self, "prompt_format", PromptFormat(self.prompt_format))
        if self.multiplicity not in MULTIPLICITY:
            raise ValueError(f"--scenelora-multiplicity {self.multiplicity!r} is not one of "
                             f"{'|'.join(MULTIPLICITY)}")
        if self.regression not in REGRESSION:
            raise ValueError(f"--scenelora-regression {self.regression!r} is not one of "
                             f"{'|'.join(REGRESSION)}")
        if not self.base_model:
            raise ValueError("--base-model is empty; use 'tiny', a preset, a directory or an HF id")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--scenelora-seed {self.seed!r} is outside 0..{MAX_SEED}")
        if self.update_baseline and not self.baseline_path:
            raise ValueError("--scenelora-update-baseline needs --scenelora-baseline FILE (or "
                             "scenelora_baseline in [tool.pytest.ini_options]) to say where to write it")
