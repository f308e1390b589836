"""``scenelora train``: train one adapter, or the demo library, from a shell.

Prints one line per adapter, ``trained <name> in N steps (...): <path>`` or
``reused cached adapter <path>``; progress goes to stderr (a bar drawn in place on a terminal,
log lines otherwise). SIGTERM is turned into an interrupt, so a killed run cleans up its
temporary files like a Ctrl-C does and leaves no partial adapter behind.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..engine.bases import TINY
from ..settings import number_parser, parse_device, parse_prompt_format, parse_quantization, parse_seed
from ..text import printable

_positive_int = number_parser(int, lambda n: n >= 1, "must be 1 or more")
# upper bounds where a huge value fails deep in torch (an overflow, an allocation) instead
# of saying what is wrong: ranks beyond 4096 exceed any base's width, and torch refuses
# thread counts that do not fit its int
_rank = number_parser(int, lambda n: 1 <= n <= 4096, "must be 1 to 4096")
_threads = number_parser(int, lambda n: 1 <= n <= 1024, "must be 1 to 1024")
_positive_float = number_parser(float, lambda n: n > 0, "must be positive")
_fraction = number_parser(float, lambda n: 0 <= n < 1, "must be in [0, 1)")


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{value!r} names no module; write e.g. v_proj,o_proj")
    return names


def _preset(value: str) -> str:
    from ..engine.training import TargetPreset  # light: training imports torch lazily only in functions

    try:
        return TargetPreset(value).value
    except ValueError:
        allowed = "|".join(p.value for p in TargetPreset)
        raise argparse.ArgumentTypeError(f"{value!r} is not a preset; use {allowed}") from None


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to the ``scenelora`` command's subparsers."""
    parser = subparsers.add_parser(
        "train", help="train a LoRA adapter <scene>_<role>.safetensors (or --all: the demo library)",
        description="Train a LoRA (or QLoRA) adapter for one scene and role. Trained adapters are "
                    "cached by a hash of base, data, settings and seed: asking again trains nothing.",
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--scene", metavar="ID", help="scene id, e.g. Δ42")
    what.add_argument("--role", metavar="ROLE", help="role (register), e.g. poetic")
    what.add_argument("--all", action="store_true",
                      help="train the demo library: scene Δ42 in roles logic, poetic, body, silence")
    what.add_argument("--data", type=Path, metavar="PATH",
                      help="training data JSONL (default: the shipped fixtures/train/roles.jsonl)")
    what.add_argument("--scenes", type=Path, metavar="PATH", help="scenes file (default: shipped)")
    what.add_argument("--topics", type=Path, metavar="PATH", help="topics file (default: shipped)")
    what.add_argument("--input-mode", choices=("token", "fragment"), metavar="token|fragment",
                      help="how the scene is given (default: its `input:` in the scenes file)")
    what.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="directory to write <scene>_<role>.safetensors into")

    base = parser.add_argument_group("base model")
    base.add_argument("--base-model", default="tiny", metavar="tiny|ID|PATH",
                      help="base to train on (default: tiny, built locally)")
    base.add_argument("--device", type=parse_device, default="auto", metavar="auto|cpu|cuda")
    base.add_argument("--quantize", type=parse_quantization, default="none", metavar="none|8bit|4bit",
                      help="QLoRA: load the base in 4-bit NF4 (double quantized) or 8-bit")
    base.add_argument("--prompt-format", type=parse_prompt_format, default="plain", metavar="plain|chat|auto",
                      help="train on prompts as they are (plain) or through the base's chat template "
                           "(chat; auto: when it has one); test with the same --prompt-format")

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--preset", type=_preset, metavar="hypertoken|fragment|attention-mlp|all-linear",
                      help="target modules by preset (default: hypertoken for a token scene, "
                           "fragment for a text scene)")
    lora.add_argument("--target-modules", type=_names, metavar="NAMES",
                      help="explicit module names, comma-separated (instead of --preset)")
    lora.add_argument("--modules-to-save", type=_names, metavar="NAMES",
                      help="modules trained in full and saved, comma-separated")
    lora.add_argument("--r", type=_rank, default=16, metavar="N", help="rank (default 16)")
    lora.add_argument("--alpha", type=_positive_float, default=16, metavar="N", help="alpha (default 16)")
    lora.add_argument("--dropout", type=_fraction, default=0.05, metavar="P", help="LoRA dropout")
    lora.add_argument("--rslora", action="store_true", help="rank-stabilised LoRA (PEFT use_rslora)")
    lora.add_argument("--dora", action="store_true", help="weight-decomposed LoRA (PEFT use_dora)")
    lora.add_argument("--allow-embedding-training", action="store_true",
                      help="allow targeting embeddings or the LM head (refused by default: it "
                           "destroys meaning compressed into a hypertoken)")

    run = parser.add_argument_group("training")
    from ..engine.training import DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_STEPS, DEFAULT_THREADS, TINY_LR
    from ..engine.training.spec import base_recipe

    smol = base_recipe("smollm2-135m")

    run.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                     help=f"optimizer steps (default {DEFAULT_STEPS}; on smollm2-135m its recipe: "
                          f"{smol['steps']})")
    run.add_argument("--lr", type=_positive_float, default=None, metavar="LR",
                     help=f"peak learning rate (default {TINY_LR} on the tiny base, {smol['lr']} on "
                          "smollm2-135m, "
                          f"{DEFAULT_LR} on any other)")
    run.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                     help=f"rows per step (default {DEFAULT_BATCH_SIZE}; on smollm2-135m: "
                          f"{smol['batch_size']})")
    run.add_argument("--seed", type=parse_seed, default=0, metavar="N")
    run.add_argument("--threads", type=_threads, default=DEFAULT_THREADS, metavar="N",
                     help=f"CPU threads while training (default {DEFAULT_THREADS}; part of the cache "
                          "key, since it changes the float sums)")
    run.add_argument("--no-cache", action="store_true", help="train even if a cached adapter exists")
    run.add_argument("--progress", choices=("auto", "bar", "rich", "plain", "none"), default="auto",
                     metavar="auto|bar|plain|none",
                     help="progress on stderr (auto: a bar on a terminal, log lines otherwise; "
                          "rich is another name for bar)")
    parser.set_defaults(handler=cmd_train)
    return parser


def _spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": args.data,
        "scenes": args.scenes,
        "topics": args.topics,
        "input_mode": args.input_mode,
        "base": args.base_model,
        "device": args.device,
        "quantize": args.quantize,
        "prompt_format": args.prompt_format,
        "preset": args.preset,
        "target_modules": tuple(args.target_modules or ()),
        "modules_to_save": tuple(args.modules_to_save or ()),
        "r": args.r,
        "alpha": args.alpha,
        "dropout": args.dropout,
        "use_rslora": args.rslora,
        "use_dora": args.dora,
        "allow_embedding_training": args.allow_embedding_training,
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": args.threads,
    }


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A ``kill`` runs the same cleanup as Ctrl-C: temporary files are removed."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.training import DEMO_ROLES, DEMO_SCENE, TrainingError, TrainSpec, progress_for, train

    if args.all and (args.scene or args.role):
        raise TrainingError("--all trains the demo library (Δ42 in four roles); drop --scene/--role")
    if not args.all and not (args.scene and args.role):
        missing = " and ".join(f for f, v in (("--scene", args.scene), ("--role", args.role)) if not v)
        raise TrainingError(f"{missing} missing: name the adapter (--scene Δ42 --role poetic) or pass --all")
    fields = _spec_fields(args)
    wanted = [(DEMO_SCENE, role) for role in DEMO_ROLES] if args.all else [(args.scene, args.role)]
    specs = [TrainSpec(scene=scene, role=role, **fields) for scene, role in wanted]  # validate first
    progress = progress_for(args.progress, sys.stderr)
    if args.base_model == TINY and progress is not None:
        from ..engine.tinybase import ensure_tiny_base

        # the first run builds the tiny base (a minute or two): say so instead of hanging
        ensure_tiny_base(progress=lambda line: print(line, file=sys.stderr, flush=True))
    with _sigterm_as_interrupt():
        for spec in specs:
            result = train(spec, args.out, cache=not args.no_cache, progress=progress)
            print(printable(result.summary()), flush=True)
    return 0


__all__ = ["add_train_command", "cmd_train"]
