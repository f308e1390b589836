"""How scenes and topics are put to a model: the one place that knows the prompt text.

The tiny base's corpus uses the same headers (``Scene: …`` / ``Topic: …`` followed by a
newline), so a prompt here is exactly the start of a document the base has seen.
A scene is given either as its hypertoken alone (``input: token``, e.g. ``Scene: Δ42``),
which only an adapter trained on that scene can unpack, or as its core text
(``input: fragment``).
"""

from __future__ import annotations

import enum


class InputMode(str, enum.Enum):
    TOKEN = "token"
    FRAGMENT = "fragment"


def scene_prompt(scene_id: str, core: str, mode: InputMode | str) -> str:
    """The prompt for a scene: its hypertoken or its core text, as a ``Scene:`` header."""
    return f"Scene: {scene_id if InputMode(mode) is InputMode.TOKEN else core.strip()}\n"


def topic_prompt(description: str) -> str:
    """The prompt for a topic (used to test that a voice survives a change of topic)."""
    return f"Topic: {description.strip()}\n"
