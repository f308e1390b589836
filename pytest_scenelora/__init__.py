"""pytest-scenelora: behavioural tests for LoRA adapters as voices.

The public API is imported lazily (PEP 562), so that ``import pytest_scenelora`` (which
pytest does for the plugin on every run) costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checks.runner import SuiteRunner
    from .engine.adapters import AdapterInfo, convert, load_tensors, read_adapter, save_adapter_file
    from .engine.bases import LoadedBase, fingerprint, load_base, resolve_base
    from .engine.generation import GenerationConfig
    from .engine.library import AdapterHandle, AdapterLibrary
    from .engine.training import AdapterTrainer, TrainSpec, train
    from .errors import (
        AdapterFormatError,
        AdapterMismatchError,
        BaseModelError,
        BaseModelNotFoundError,
        SceneloraError,
    )
    from .scoring.embedders import CharNgramScorer, Embedder, MemoryVectorCache, make_scorer
    from .scoring.verdict import Status, Verdict, decide
    from .strategies import scenes

_EXPORTS = {
    "AdapterInfo": "engine.adapters",
    "convert": "engine.adapters",
    "load_tensors": "engine.adapters",
    "read_adapter": "engine.adapters",
    "save_adapter_file": "engine.adapters",
    "AdapterFormatError": "errors",
    "AdapterMismatchError": "errors",
    "BaseModelError": "errors",
    "BaseModelNotFoundError": "errors",
    "SceneloraError": "errors",
    "GenerationConfig": "engine.generation",
    "CharNgramScorer": "scoring.embedders",
    "Embedder": "scoring.embedders",
    "MemoryVectorCache": "scoring.embedders",
    "make_scorer": "scoring.embedders",
    "Status": "scoring.verdict",
    "Verdict": "scoring.verdict",
    "decide": "scoring.verdict",
    "AdapterTrainer": "engine.training",
    "TrainSpec": "engine.training",
    "train": "engine.training",
    "SuiteRunner": "checks.runner",
    "scenes": "strategies",
    "AdapterHandle": "engine.library",
    "AdapterLibrary": "engine.library",
    "LoadedBase": "engine.bases",
    "fingerprint": "engine.bases",
    "load_base": "engine.bases",
    "resolve_base": "engine.bases",
}

__all__ = [
    "AdapterFormatError",
    "AdapterHandle",
    "AdapterInfo",
    "AdapterLibrary",
    "AdapterMismatchError",
    "AdapterTrainer",
    "BaseModelError",
    "BaseModelNotFoundError",
    "CharNgramScorer",
    "Embedder",
    "GenerationConfig",
    "LoadedBase",
    "MemoryVectorCache",
    "SceneloraError",
    "Status",
    "SuiteRunner",
    "TrainSpec",
    "Verdict",
    "convert",
    "decide",
    "fingerprint",
    "load_base",
    "load_tensors",
    "make_scorer",
    "read_adapter",
    "resolve_base",
    "save_adapter_file",
    "scenes",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_scenelora' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
