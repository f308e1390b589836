"""The ``scenelora`` command: bases, adapters, and (with the other modules) training,
suites and reports from a shell.

Every error this package raises on purpose is printed as one line,
``scenelora: error: <what is wrong and what to do>``, with no traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..engine import adapters as adapter_files
from ..engine.bases import TINY
from ..errors import AdapterFormatError, SceneloraError
from ..reporting.terminal import plain
from ..settings import number_parser, parse_device, parse_quantization
from ..text import printable

Handler = Callable[[argparse.Namespace], int]


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (with a header) for pipes and files.

    Cells hold names and metadata read from files, so they are shown as plain text (never
    rich markup) with control characters escaped, on a terminal and in a pipe alike.
    """
    console = _console()
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=plain(title))
        for column in columns:
            table.add_column(plain(column))
        for row in rows:
            table.add_row(*map(plain, row))
        console.print(table)
    else:
        print("\t".join(map(printable, columns)))
        for row in rows:
            print("\t".join(map(printable, row)))


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------- base


def cmd_base_list(args: argparse.Namespace) -> int:
    from ..engine.bases import preset_rows

    rows = [(r["name"], r["hf_id"], r["family"], r["on_disk"]) for r in preset_rows()]
    _print_table("base models", ("name", "Hugging Face id", "family", "on disk"), rows)
    return 0


def cmd_base_path(args: argparse.Namespace) -> int:
    from ..engine.bases import resolve_base

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    if args.name == TINY:
        from ..engine.tinybase import ensure_tiny_base

        print(ensure_tiny_base(progress=progress))
    else:
        print(resolve_base(args.name))
    return 0


# ----------------------------------------------------------------------------- adapters


def _structural_findings(info: adapter_files.AdapterInfo) -> adapter_files.Validation:
    """What can be checked without a base: readable tensors, finite values, A/B pairs."""
    found = adapter_files.Validation()
    try:
        adapter_files.load_tensors(info)
    except AdapterFormatError as exc:
        found.errors.append(str(exc))
    a_keys = {k.replace(".lora_A.", ".X.") for k in info.tensors if ".lora_A." in k}
    b_keys = {k.replace(".lora_B.", ".X.") for k in info.tensors if ".lora_B." in k}
    for key in sorted(a_keys ^ b_keys)[:1]:
        found.errors.append(f"{info.path}: {key.replace('.X.', '.lora_A/B.')!r} lacks its partner factor")
    return found


def cmd_inspect(args: argparse.Namespace) -> int:
    info = adapter_files.read_adapter(args.path)
    findings = adapter_files.Validation()
    against = "structure only (pass --base-model to check it against a base)"
    if args.base_model:
        from ..engine.bases import fingerprint, resolve_base

        base_dir = resolve_base(args.base_model)
        findings = adapter_files.validate(info, base_dir, fingerprint(base_dir))
        against = f"against base {args.base_model} ({base_dir})"
    findings.errors += _structural_findings(info).errors
    targets = info.target_modules
    rows = [
        ("adapter", info.name),
        ("path", f"{info.path} ({info.format.value})"),
        ("scene", info.scene or "?"),
        ("role", info.role or "?"),
        ("rank", str(info.rank)),
        ("alpha", str(info.alpha)),
        ("target modules", targets if isinstance(targets, str) else ", ".join(targets)),
        ("trained on", f"{info.base_model or '?'} (fingerprint {info.base_fingerprint[:12] or '?'})"),
        ("tensors", f"{len(info.tensors)} ({_human_bytes(info.nbytes)})"),
        ("content sha256", info.content_hash),
    ]
    if info.metadata.get("train_data_sha256"):
        rows.append(("train data sha256", info.metadata["train_data_sha256"]))
    console = _console()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        console.print(plain(f"{key:<{width}}  {value}"))
    verdict = "ok" if findings.ok else "UNUSABLE"
    console.print(plain(f"{'validation':<{width}}  {verdict}, {against}"))
    for error in findings.errors:
        console.print(plain(f"  error: {error}"))
    for warning in findings.warnings:
        console.print(plain(f"  warning: {warning}"))
    return 0 if findings.ok else 1


def cmd_convert(args: argparse.Namespace) -> int:
    written = adapter_files.convert(args.src, args.dst)
    print(f"wrote {printable(written)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    base_dir = fp = None
    if args.base_model:
        from ..engine.bases import fingerprint, resolve_base

        base_dir = resolve_base(args.base_model)
        fp = fingerprint(base_dir)
    rows: list[tuple[str, ...]] = []
    failures = 0
    for path in adapter_files.discover([args.directory]):
        try:
            info = adapter_files.read_adapter(path)
        except AdapterFormatError as exc:
            failures += 1
            rows.append((adapter_files.adapter_name(path), "?", "?", "?", "?", f"no: {exc}"))
            continue
        if base_dir is None:
            status = "(no --base-model)"
        else:
            check = adapter_files.validate(info, base_dir, fp)
            status = "yes" if check.ok else f"no: {check.errors[0]}"
            if check.ok and check.warnings:
                status = f"yes, but: {check.warnings[0]}"
            failures += not check.ok
        rows.append((info.name, info.scene or "?", info.role or "?", str(info.rank),
                     _human_bytes(info.nbytes), status))
    _print_table(f"adapters in {args.directory}",
                 ("name", "scene", "role", "rank", "size", "validates"), rows)
    return 1 if failures else 0


# -------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scenelora", description="Behavioural tests for LoRA adapters as voices."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    base = sub.add_parser("base", help="list base models, or print where one is on disk")
    base_sub = base.add_subparsers(dest="base_command", required=True, metavar="list|path")
    base_sub.add_parser("list", help="presets, their HF ids, and whether each is on disk"
                        ).set_defaults(handler=cmd_base_list)
    path = base_sub.add_parser("path", help="print a base's local directory (builds tiny)")
    path.add_argument("name", nargs="?", default=TINY, metavar="NAME")
    path.set_defaults(handler=cmd_base_path)

    inspect = sub.add_parser("inspect", help="show an adapter and validate it")
    inspect.add_argument("path", type=Path, metavar="PATH")
    inspect.add_argument("--base-model", metavar="B", help="validate against this base")
    inspect.set_defaults(handler=cmd_inspect)

    convert = sub.add_parser("convert", help="single file <-> PEFT folder, losslessly")
    convert.add_argument("src", type=Path, metavar="SRC")
    convert.add_argument("dst", type=Path, metavar="DST")
    convert.set_defaults(handler=cmd_convert)

    listing = sub.add_parser("list", help="show the adapters in a directory")
    listing.add_argument("directory", type=Path, metavar="DIR")
    listing.add_argument("--base-model", metavar="B", help="validate each against this base")
    listing.set_defaults(handler=cmd_list)

    for extension in _extensions():
        extension(sub)
    return parser


def _extensions() -> list[Callable[[argparse._SubParsersAction], Any]]:
    """Subcommands that live beside the modules they drive."""
    from .gate import add_gate_command
    from .init import add_init_command
    from .plan import add_plan_command
    from .report import add_report_commands
    from .train import add_train_command

    return [add_train_command, add_demo_command, add_report_commands, add_gate_command, add_init_command,
            add_plan_command]


# -------------------------------------------------------------------------------- demo


_demo_threads = number_parser(int, lambda n: 1 <= n <= 1024, "must be 1 to 1024")


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="the main job: build the base, train the Δ42 voices, run the suites",
        description="Build the base (the tiny one unless --base-model names another), train (or "
                    "reuse) the four Δ42 role adapters on it with its recipe, run the shipped "
                    "suites on them with pytest, and show the coherence report.",
    )
    demo.add_argument("--base-model", default=TINY, metavar="NAME|PATH",
                      help="the base to train and test on: tiny (default), a preset such as "
                           "smollm2-135m, a local folder or a .gguf file")
    demo.add_argument("--out", type=Path, default=None, metavar="DIR",
                      help="where the adapters are written (default: ./adapters, or "
                           "./adapters-<base> for a base other than tiny)")
    demo.add_argument("--suites", type=Path, default=None, metavar="DIR",
                      help="suites to run (default: the shipped suites)")
    demo.add_argument("--threads", type=_demo_threads, default=None, metavar="N",
                      help="CPU threads while training (default: scenelora train's; 1 on a machine "
                           "whose cores other work is using)")
    demo.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                      help="extra pytest arguments, after --")
    demo.set_defaults(handler=cmd_demo)


def _demo_out(base_model: str) -> Path:
    if base_model == TINY:
        return Path("adapters")
    # voices of different bases never share a folder: a pytest run over it would mix them
    return Path("adapters-" + re.sub(r"[^\w.-]+", "-", Path(base_model).name).strip("-"))


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    import pytest

    from .. import shipped
    from ..engine.training import progress_for, train_demo_library

    console = _console()
    start = time.perf_counter()
    out = args.out or _demo_out(args.base_model)
    console.print("[bold]1/3[/] the base:", plain(args.base_model), highlight=False)
    if args.base_model == TINY:
        from ..engine.tinybase import ensure_tiny_base

        base_dir = ensure_tiny_base(progress=lambda line: console.print(plain(f"  {line}")))
    else:
        from ..engine.bases import resolve_base

        base_dir = resolve_base(args.base_model)  # a GGUF preset is converted here, once
    console.print(plain(f"  {base_dir} ({time.perf_counter() - start:.0f} s)"))
    console.print("[bold]2/3[/] the Δ42 voices: logic, poetic, body, silence")
    trained_at = time.perf_counter()
    settings = {"threads": args.threads} if args.threads else {}
    for result in train_demo_library(out, base=args.base_model, progress=progress_for("auto"), **settings):
        how = "reused from the cache" if result.reused_cache else f"trained in {result.seconds:.0f} s"
        recipe = result.metadata.get("train_recipe_from", "")
        console.print(plain(f"  {result.path} ({how}; {recipe})" if recipe else f"  {result.path} ({how})"))
    console.print(plain(f"  voices ready in {time.perf_counter() - trained_at:.0f} s"))
    suites = args.suites or shipped.suites_dir()
    console.print("[bold]3/3[/] the suites in", plain(suites))
    extra = [a for a in args.pytest_args if a != "--"]
    # the suites alone, whatever project the demo is started in: no configuration file of
    # the current directory (its addopts, testpaths or "error" warning filters) applies,
    # and pytest's note that this package was imported before it could rewrite asserts
    # (this command imported it) is expected, not news
    suites_at = time.perf_counter()
    code = int(pytest.main([str(suites), "--adapter", str(out), "--base-model", args.base_model,
                            "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(suites),
                            "-W", "ignore::pytest.PytestAssertRewriteWarning", *extra]))
    timing = (f"in {time.perf_counter() - start:.0f} s (suites "
              f"{time.perf_counter() - suites_at:.0f} s) on base {args.base_model}")
    if code == pytest.ExitCode.TESTS_FAILED:
        # the demo shows verdicts; gating on them is `pytest suites/ --adapter ...`'s job
        console.print(plain(f"demo finished {timing}: some checks failed or stayed undecided "
                            "(see the coherence report above)"))
        return 0
    console.print(plain(f"demo finished {timing}"))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SceneloraError as exc:
        print(f"scenelora: error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scenelora: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main", "parse_device", "parse_quantization"]

if __name__ == "__main__":
    sys.exit(main())
