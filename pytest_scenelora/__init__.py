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
    "BaseModelError",
    "BaseModelNotFoundError",
    "GenerationConfig",
    "LoadedBase",
    "SceneloraError",
    "convert",
    "fingerprint",
    "load_base",
    "load_tensors",
    "read_adapter",
    "resolve_base",
    "save_adapter_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_scenelora' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
