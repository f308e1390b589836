"""The behavioural checks: pure functions of scores and vectors, each returning verdicts.

Nothing here loads a model or knows about pytest. The suite runner generates outputs,
embeds them with a scorer (:mod:`pytest_scenelora.scoring`), calls a check, and renders
its :class:`~pytest_scenelora.verdict.Verdict`. ``CHECKS`` maps a suite's check ``kind``
to its function; ``unseen_scenes`` is not listed because it is ``scene_holds`` and
``registers_unpack`` run on Hypothesis-drawn scenes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .active import adapter_active, next_token_kl
from .merge import max_logit_difference, merge_equivalence
from .registers import RegisterSpace, register_centroids, register_holds, registers_unpack
from .scene import scene_holds, scene_margins
from .topic_shift import style_survives_topic_shift

__all__ = [
    "CHECKS",
    "RegisterSpace",
    "adapter_active",
    "max_logit_difference",
    "merge_equivalence",
    "next_token_kl",
    "register_centroids",
    "register_holds",
    "registers_unpack",
    "scene_holds",
    "scene_margins",
    "style_survives_topic_shift",
]

#: Suite ``kind`` → check function.
CHECKS: dict[str, Callable[..., Any]] = {
    "adapter_active": adapter_active,
    "scene_holds": scene_holds,
    "registers_unpack": registers_unpack,
    "style_survives_topic_shift": style_survives_topic_shift,
    "merge_equivalence": merge_equivalence,
}
