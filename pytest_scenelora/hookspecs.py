"""The hooks pytest-scenelora adds to pytest, registered by the plugin's ``pytest_addoption``.

Imported on every pytest run: it imports nothing but pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .checks.kind import CheckKind


@pytest.hookspec
def pytest_scenelora_check_kinds() -> list[CheckKind]:
    """Return check kinds (:class:`pytest_scenelora.checks.CheckKind`) that suites may name
    in ``kind:``; implement it in a ``conftest.py`` or an installed plugin. The shipped
    kinds come through this hook too. Every implementation's lists are joined; a name
    given twice is a usage error."""
