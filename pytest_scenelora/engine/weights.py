"""Model folders a suite points at: safetensors weights only, and no code of their own.

A suite names a merged checkpoint (``merged_model``) and an embedder folder, and anyone
can propose a suite in a pull request. Pickle-based weights (``pytorch_model.bin``,
``*.pt``) run code when they are loaded, and a ``config.json`` with an ``auto_map`` names
Python code to import. So each folder is checked here before transformers or
sentence-transformers sees it (every problem is one line naming the file), and then loaded
with ``use_safetensors=True`` and ``trust_remote_code=False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["PICKLE_SUFFIXES", "check_model_folder", "read_config"]

#: Weight formats that unpickle (and so can run code) when loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


def _listing(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def read_config(folder: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """``config.json`` of *folder* as a mapping; *error* (one line) when it is missing,
    not JSON, or names code to run (``auto_map``)."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {folder}: no config.json; give a folder written by save_pretrained") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise error(f"{path}: not a readable JSON config ({reason}); save the model again") from None
    if not isinstance(config, dict):
        raise error(f"{path}: a config must be a JSON object, not {type(config).__name__}")
    if config.get("auto_map"):
        raise error(f"{path}: names its own Python code (auto_map), which is never run here; "
                    "use a model of an architecture transformers knows")
    return config


def check_model_folder(folder: Path, what: str, error: type[Exception], *,
                       modules: bool = False) -> list[Path]:
    """The ``*.safetensors`` files at the top of *folder*, after refusing pickle weights.

    A folder (or, with *modules*, one of its sub-folders: a sentence-transformers module
    such as ``2_Dense``) that holds pickle weights and no safetensors is refused, naming the
    pickle file; so is a folder with no safetensors at all. A folder holding both formats
    is fine: only the safetensors are read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise error(f"{what} {folder}: not a folder; give the folder a model was saved to")
    try:
        top = _listing(folder)
        places = [top] + ([_listing(p) for p in top if p.is_dir()] if modules else [])
    except OSError as exc:
        raise error(f"{what} {folder}: cannot be read ({exc.strerror or exc})") from None
    for files in places:
        pickles = [f for f in files if f.suffix.lower() in PICKLE_SUFFIXES and f.is_file()]
        if pickles and not any(f.suffix == ".safetensors" for f in files):
            raise error(f"{pickles[0]}: {what} weights in a pickle format, which runs code when "
                        "loaded and is never read here; save them as safetensors "
                        "(save_pretrained(safe_serialization=True))")
    found = [f for f in top if f.suffix == ".safetensors" and f.is_file()]
    if not found:
        raise error(f"{what} {folder}: no *.safetensors weights; save the model with "
                    "save_pretrained(safe_serialization=True)")
    return found
