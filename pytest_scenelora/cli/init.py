"""``scenelora init``: the shipped suites and their world, copied into a project to edit.

    scenelora init [DIR] [--base-model NAME] [--force]

writes ``DIR/suites/*.yaml`` (the shipped suites, pointed at the copies below),
``DIR/scenelora/{scenes,topics,registers}.yaml`` and, when DIR has no pytest configuration
yet, a ``pytest.ini`` that names the suites and the base; otherwise it prints
the lines to add. Nothing that exists is overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import UsageError

WORLD_FILES = ("scenes.yaml", "topics.yaml", "registers.yaml")

PYTEST_CONFIGS = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def add_init_command(sub: argparse._SubParsersAction) -> None:
    init = sub.add_parser(
        "init", help="copy the shipped suites, scenes, topics and registers into a project",
        description="Copy the shipped suites (suites/) and the scenes, topics and registers they "
                    "test against (scenelora/) into DIR for editing, and point pytest at them.")
    init.add_argument("directory", nargs="?", type=Path, default=Path("."), metavar="DIR",
                      help="the project (default: the current directory)")
    init.add_argument("--base-model", default="tiny", metavar="NAME",
                      help="the base the configuration names (default: tiny; e.g. smollm2-135m)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(handler=cmd_init)


def ini_lines(base_model: str) -> list[str]:
    # the suites find adapters/ themselves (`adapter_dir: ../adapters`), and skip, saying
    # how to train them, while it is empty: so no scenelora_adapters line that would make
    # every pytest run a usage error until adapters/ exists
    return ["[pytest]", "testpaths = suites", f"scenelora_base_model = {base_model}"]


def planned_files(project: Path) -> dict[Path, str]:
    """Every file ``init`` writes into *project*, with its text (the suites pointed at the
    copied world files, their comments kept)."""
    from .. import shipped
    from ..suite import is_suite

    files: dict[Path, str] = {}
    world = {"scenes": shipped.scenes_file(), "topics": shipped.topics_file(),
             "registers": shipped.registers_file()}
    for key, source in world.items():
        files[project / "scenelora" / f"{key}.yaml"] = source.read_text(encoding="utf-8")
    pointers = "".join(f"{key}: ../scenelora/{key}.yaml\n" for key in world)
    for suite in sorted(shipped.suites_dir().glob("*.yaml")):
        if not is_suite(suite):
            continue
        text = suite.read_text(encoding="utf-8")
        if re.search(r"^(scenes|topics|registers):", text, flags=re.MULTILINE):
            files[project / "suites" / suite.name] = text
            continue
        # after the `suite:` line, so the keys sit with the other top-level ones
        text, count = re.subn(r"^(suite:.*\n)", lambda m: m.group(1) + pointers, text, count=1,
                              flags=re.MULTILINE)
        files[project / "suites" / suite.name] = text if count else pointers + text
    return files


def cmd_init(args: argparse.Namespace) -> int:
    from ..fsutil import atomic_write_text

    project: Path = args.directory
    if project.exists() and not project.is_dir():
        raise UsageError(f"{project}: not a directory; pass the project folder to initialise")
    files = planned_files(project)
    configured = [name for name in PYTEST_CONFIGS if (project / name).is_file()]
    if not configured:
        files[project / "pytest.ini"] = "\n".join(ini_lines(args.base_model)) + "\n"
    existing = [path for path in files if path.exists()]
    if existing and not args.force:
        raise UsageError(f"{existing[0]} exists ({len(existing)} of the {len(files)} files init writes do); "
                         "pass --force to overwrite them, or edit them as they are")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        print(f"wrote {path}")
    if configured:
        lines = ini_lines(args.base_model)[1:]
        where = configured[0]
        if where == "pyproject.toml":
            lines = ["[tool.pytest.ini_options]", 'testpaths = ["suites"]',
                     f'scenelora_base_model = "{args.base_model}"']
        print(f"{project / where} configures pytest already; add to it:")
        for line in lines:
            print(f"    {line}")
    print(f"next: put your adapters in {project / 'adapters'}/ (or train them: scenelora train --all "
          f"--base-model {args.base_model} --out {project / 'adapters'}), then run `pytest` in {project}")
    return 0
