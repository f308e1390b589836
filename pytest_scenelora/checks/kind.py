"""What a check kind is: its parameters, its tolerance and how it runs.

A suite's ``kind:`` names one :class:`CheckKind`. The six shipped kinds and any a
project adds (the ``pytest_scenelora_check_kinds`` hook, in a ``conftest.py`` or an
installed plugin) are the same record, so a user's kind gets the same validation,
node ids, cache, intervals, reports and baselines. Importing this module is cheap: the
suite loader reads it while collecting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..specs import Param

if TYPE_CHECKING:
    from ..scoring.verdict import Verdict
    from ..specs import CheckSpec
    from .context import CheckContext

#: Keys every check has, which a kind's parameters may not reuse.
RESERVED = frozenset({"kind", "name", "tolerance", "max_samples"})

#: ``max_samples: 0`` (the default) lets sequential sampling draw up to this many times a
#: check's ``samples``.
SEQUENTIAL_FACTOR = 4
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NotApplicable(Exception):
    """Raised by a kind's ``run`` when the check cannot be asked of this run at all (the
    merge of an adapter into a quantized base, say): the item is skipped with this message,
    which says why and what would make it apply, and nothing is recorded for it."""


@dataclass(frozen=True)
class CheckKind:
    """A check kind: *params* is its schema (``threshold`` is in the check's own unit),
    *tolerance* how far its score may drop below a stored baseline before that counts
    as a regression, and ``run(context, spec, adapter)`` gathers what it needs through
    the :class:`~.context.CheckContext` and judges it into a Verdict."""

    name: str
    params: Mapping[str, Param]
    tolerance: float
    run: Callable[[CheckContext, CheckSpec, str], Verdict]
    help: str = ""
    #: What sequential sampling raises, look by look, when the check is inconclusive: its
    #: ``samples`` (per prompt), or another int parameter that adds prompts, such as
    #: ``unseen_scenes``' ``examples`` (more scenes: a pooled verdict over clusters gains
    #: more from another cluster than from more samples of the ones it has).
    grows: str = "samples"
    schema: Mapping[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema = dict(self.params)
        schema["tolerance"] = Param(float, self.tolerance, 0.0, 100.0,
                                    "largest drop from the baseline that is not a regression")
        if "samples" in schema:
            grown = "samples" if self.grows == "samples" else f"samples x {self.grows}"
            schema["max_samples"] = Param(int, 0, 0, 100_000,
                                          f"most samples sequential sampling draws when `{self.grows}` "
                                          f"leaves the check inconclusive (0: {SEQUENTIAL_FACTOR} x "
                                          f"{grown}; at or below that: no sequential sampling)")
        object.__setattr__(self, "schema", schema)

    def problem(self) -> str | None:
        """What is wrong with this definition (None: nothing), said for its author."""
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            return f"check kind name {self.name!r} is not an identifier; use e.g. 'length_band'"
        reused = sorted(RESERVED & set(self.params))
        if reused:
            return f"check kind {self.name!r} declares {', '.join(reused)}, which every check has; rename it"
        for key, param in self.params.items():
            if not isinstance(param, Param) or param.kind not in (int, float, str, list):
                return (f"check kind {self.name!r}: parameter {key!r} must be a Param of int, float, "
                        "str or list")
            if param.kind in (int, float) and (param.low is None or param.high is None):
                return f"check kind {self.name!r}: number parameter {key!r} needs low and high"
        if self.grows != "samples" and (self.params.get(self.grows) is None
                                         or self.params[self.grows].kind is not int
                                         or "samples" not in self.params):
            return (f"check kind {self.name!r}: grows={self.grows!r} must name an int parameter of "
                    "a kind that has 'samples'")
        if not callable(self.run):
            return f"check kind {self.name!r}: run must be callable as run(context, spec, adapter)"
        return None
