"""The check kinds: one module each, with its parameters, tolerance, how it gathers its
samples, vectors or logits (through a :class:`CheckContext`), and its pure judgement.

The judgements are pure functions of scores and vectors returning a
:class:`~pytest_scenelora.scoring.verdict.Verdict`; nothing here knows about pytest. A project
adds a kind of its own with a :class:`CheckKind` returned from the
``pytest_scenelora_check_kinds`` hook (README, "Writing a check kind"). ``CHECKS`` maps a
kind to its pure judgement; ``unseen_scenes`` is not listed because it is
``register_holds`` on Hypothesis-drawn scenes (judged by the share of samples on the
scene and in the register, where ``registers_unpack`` judges their mean weaker margin).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..specs import CheckSpec, Param
from .active import adapter_active, next_token_kl
from .context import CheckContext, Request
from .kind import CheckKind, NotApplicable
from .merge import max_logit_difference, merge_equivalence
from .registers import RegisterSpace, register_centroids, register_holds, registers_unpack
from .scene import scene_holds, scene_margins
from .topic_shift import style_survives_topic_shift

__all__ = [
    "CHECKS",
    "CheckContext",
    "CheckKind",
    "CheckSpec",
    "NotApplicable",
    "Param",
    "RegisterSpace",
    "Request",
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
