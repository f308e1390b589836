"""Shared fixtures: one tiny base per test session, and small adapters made on it.

Models are built locally once per session (nothing is downloaded): the tiny base under
a session-wide ``SCENELORA_HOME`` that pytest-xdist workers share (the build holds a
file lock, so it happens once), and LoRA adapters with random factors made in seconds.
Set ``SCENELORA_TEST_HOME`` to reuse one cache across runs while developing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("NO_COLOR", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-base tests first: the tier trains on SmolLM2 for minutes, and started last
    it would leave one xdist worker idle while the other finishes it."""
    items.sort(key=lambda item: item.get_closest_marker("real_base") is None)


@pytest.fixture(scope="session")
def scenelora_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    explicit = os.environ.get("SCENELORA_TEST_HOME")
    # basetemp's parent is shared by all xdist workers of one run
    root = Path(explicit) if explicit else tmp_path_factory.getbasetemp().parent / "scenelora-home"
    root.mkdir(parents=True, exist_ok=True)
    os.environ["SCENELORA_HOME"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_base_dir(scenelora_home: Path) -> Path:
    """The tiny base, built from the shipped corpus once per session.

    ``SCENELORA_TEST_BASE`` points at an already built base instead (development only:
    it skips the build while the corpus is being edited).
    """
    from pytest_scenelora.engine.tinybase import ensure_tiny_base

    if os.environ.get("SCENELORA_TEST_BASE"):
        return Path(os.environ["SCENELORA_TEST_BASE"])
    return ensure_tiny_base(scenelora_home)


@pytest.fixture
def tiny_base(tiny_base_dir: Path):
    """The tiny base loaded for this test alone (a fraction of a second): an AdapterLibrary
    wraps its model with PEFT in place, so a shared one would carry one test's adapters
    into the next test's generations."""
    from pytest_scenelora.engine.bases import load_base

    return load_base(str(tiny_base_dir), device="cpu")


@pytest.fixture(scope="session")
def demo_adapters(scenelora_home: Path, tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's four Δ42 voices on the tiny base, trained once per run (the training cache's
    lock makes xdist workers share them)."""
    from pytest_scenelora.engine.training import train_demo_library

    out = tmp_path_factory.mktemp("demo-adapters")
    train_demo_library(out)
    return out


MakeAdapter = Callable[..., Path]


@pytest.fixture(scope="session")
def make_adapter(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> MakeAdapter:
    """Write a LoRA adapter with random (non-zero) factors for the tiny base.

    ``make_adapter("Δ42_poetic", seed=1, targets=("v_proj", "o_proj"), r=8)`` returns the
    path of a single-file adapter; ``as_dir=True`` writes PEFT's folder format instead.
    """
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from pytest_scenelora.engine.adapters import save_adapter_dir, save_adapter_file
    from pytest_scenelora.engine.bases import fingerprint

    out = tmp_path_factory.mktemp("adapters")
    fp = fingerprint(tiny_base_dir)

    def make(name: str, *, seed: int = 0, targets: tuple[str, ...] = ("v_proj", "o_proj"),
             r: int = 8, alpha: int = 16, directory: Path | None = None, as_dir: bool = False,
             **lora: object) -> Path:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                            task_type="CAUSAL_LM", init_lora_weights=False, **lora)
        peft_model = get_peft_model(model, config)
        # PEFT's non-default init is tiny; scale B up so the adapter visibly changes outputs
        state = {k: (v * 20 if "lora_B" in k else v)
                 for k, v in get_peft_model_state_dict(peft_model).items()}
        scene, _, role = name.rpartition("_")
        where = (directory or out) / (name if as_dir else f"{name}.safetensors")
        save = save_adapter_dir if as_dir else save_adapter_file
        return save(where, state, peft_model.peft_config["default"], scene=scene, role=role,
                    base_model="tiny", base_fingerprint=fp)

    return make


#: Libraries that pytester's in-process runs must leave imported. After each inner run,
#: pytester drops every module that run imported; a second import of torch's, PEFT's or
#: bitsandbytes' modules then fails ("Tried to register an operator ... multiple times",
#: or transformers' lazy loader "Could not import module ..."). Our own package is still
#: re-imported fresh by every inner run.
KEEP_IMPORTED = frozenset({"torch", "torchgen", "transformers", "peft", "bitsandbytes", "accelerate",
                           "sentence_transformers", "safetensors", "tokenizers", "huggingface_hub",
                           "numpy", "scipy", "sklearn"})


def _keep_heavy_libraries_imported() -> None:
    from _pytest.pytester import SysModulesSnapshot

    def keep(name: str) -> bool:
        return name.split(".", 1)[0] in KEEP_IMPORTED or name.startswith(("zope", "readline"))

    # pytester's own rule keeps zope and readline; this private hook is the one place it is
    # made, so widen it there (pytest 8 and 9), and leave pytester as it is if it moves
    if hasattr(pytest.Pytester, "_Pytester__take_sys_modules_snapshot"):
        pytest.Pytester._Pytester__take_sys_modules_snapshot = lambda self: SysModulesSnapshot(preserve=keep)


_keep_heavy_libraries_imported()
