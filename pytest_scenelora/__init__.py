"""pytest-scenelora: behavioural tests for LoRA adapters as voices.

The public API is imported lazily (PEP 562), so that ``import pytest_scenelora`` (which
pytest does for the plugin on every run) costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapters import AdapterInfo, convert, load_tensors, read_adapter, save_adapter_file
    from .errors import (
        AdapterFormatError,
        AdapterMismatchError,
        BaseModelError,
        BaseModelNotFoundError,
        SceneloraError,
    )
    from .generation import GenerationConfig
    from .library import AdapterHandle, AdapterLibrary
    from .models import LoadedBase, fingerprint, load_base, resolve_base
    from .runner import SuiteRunner
    from .scoring import CharNgramScorer, Embedder, MemoryVectorCache, make_scorer
    from .strategies import scenes
    from .training import AdapterTrainer, TrainSpec, train
    from .verdict import Status, Verdict, decide

_EXPORTS = {
    "AdapterInfo": "adapters",
    "convert": "adapters",
    "load_tensors": "adapters",
    "read_adapter": "adapters",
    "save_adapter_file": "adapters",
    "AdapterFormatError": "errors",
    "AdapterMismatchError": "errors",
    "BaseModelError": "errors",
    "BaseModelNotFoundError": "errors",
    "SceneloraError": "errors",
    "GenerationConfig": "generation",
    "CharNgramScorer": "scoring",
    "Embedder": "scoring",
    "MemoryVectorCache": "scoring",
    "make_scorer": "scoring",
    "Status": "verdict",
    "Verdict": "verdict",
    "decide": "verdict",
    "AdapterTrainer": "training",
    "TrainSpec": "training",
    "train": "training",
    "SuiteRunner": "runner",
    "scenes": "strategies",
    "AdapterHandle": "library",
    "AdapterLibrary": "library",
    "LoadedBase": "models",
    "fingerprint": "models",
    "load_base": "models",
    "resolve_base": "models",
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
