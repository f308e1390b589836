"""The shipped check kinds, and the table a suite's ``kind:`` is looked up in.

Under pytest the plugin returns :func:`shipped_kinds` from its own
``pytest_scenelora_check_kinds`` hook, next to any a ``conftest.py`` or an installed
plugin adds; outside pytest (the CLI, scripts) a suite knows the shipped kinds.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UsageError
from . import active, merge, registers, scene, topic_shift, unseen
from .kind import CheckKind


def shipped_kinds() -> list[CheckKind]:
    """The six kinds this package ships, in the order the schema lists them."""
    return [active.KIND, scene.KIND, registers.KIND, topic_shift.KIND, unseen.KIND, merge.KIND]


def by_name(kinds: Iterable[CheckKind]) -> dict[str, CheckKind]:
    """*kinds* by name, each one sound and named once; else a :class:`UsageError` that
    names the kind and what to change."""
    table: dict[str, CheckKind] = {}
    for kind in kinds:
        if not isinstance(kind, CheckKind):
            raise UsageError(f"pytest_scenelora_check_kinds returned {kind!r}, not a CheckKind; "
                             "return a list of pytest_scenelora.checks.CheckKind")
        problem = kind.problem()
        if problem:
            raise UsageError(problem)
        if kind.name in table and table[kind.name] is not kind:
            raise UsageError(f"check kind {kind.name!r} is registered twice; give one of them another name")
        table[kind.name] = kind
    return table
