"""pytest imports every installed plugin on every run: importing ours must stay cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "sentence_transformers", "bitsandbytes", "safetensors")


@pytest.mark.parametrize("module", ["pytest_scenelora.plugin", "pytest_scenelora"])
def test_importing_the_plugin_loads_no_heavy_module(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True, text=True, check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pytest_scenelora.plugin" in imported or module == "pytest_scenelora"
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert heavy == [], f"importing {module} pulled in {heavy[:5]}"
