"""Hypothesis strategies for unseen scenes of the same structure as a scenes file.

``scenes(scene_set)`` draws scenes whose fields come from the structure's held-out
vocabularies (``held_out:``: words no training data uses as scene content; failing that,
every word but the training scenes' motifs), so a drawn scene has the trained shape but
none of the trained content: it is never a training scene, nor a near copy of one. Draws
shrink towards the first word of each vocabulary, so a failure is reported simply.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .fsutil import canonical_json, sha256_bytes
from .prompts import InputMode
from .scenes import Scene, SceneSet, Split, load_scenes


def _motif_fields(scene_set: SceneSet) -> set[str]:
    """Fields whose value is one of a training scene's motifs (figure, place, ...)."""
    fields: set[str] = set()
    for scene in scene_set.split(Split.TRAIN):
        motifs = {m.lower() for m in scene.motifs}
        fields |= {name for name, value in scene.fields.items() if value.lower() in motifs}
    return fields


def novel_vocabularies(scene_set: SceneSet) -> dict[str, tuple[str, ...]]:
    """The words unseen scenes are drawn from, for each field.

    A structure may name them (``held_out:``, words no training data uses); otherwise each
    field's vocabulary is taken without the values training scenes use as motifs.
    """
    structure = scene_set.structure
    if not structure.fields:
        raise ValueError(f"{scene_set.path}: no 'structure' with field vocabularies to draw scenes from")
    held_out = structure.extra.get("held_out")
    if held_out:
        vocab = {}
        for name, words in structure.fields.items():
            chosen = tuple(w for w in words if w in set(held_out.get(name) or ()))
            vocab[name] = chosen or words
        return vocab
    motif_fields = _motif_fields(scene_set)
    trained = {name: {s.fields.get(name) for s in scene_set.split(Split.TRAIN)} for name in motif_fields}
    vocab = {}
    for name, words in structure.fields.items():
        left = tuple(w for w in words if w not in trained.get(name, set()))
        if not left:
            raise ValueError(f"{scene_set.path}: every {name!r} word is used by a training scene; "
                             "add words to structure.fields to draw unseen scenes")
        vocab[name] = left
    return vocab


def scene_from_fields(scene_set: SceneSet, fields: dict[str, str]) -> Scene:
    """A drawn scene: its core is the structure's template filled with *fields*."""
    template = scene_set.structure.core or " ".join(f"{{{name}}}" for name in fields)
    motif_fields = _motif_fields(scene_set) or set(fields)
    digest = sha256_bytes(canonical_json(fields))[:6]
    return Scene(
        id=f"drawn-{digest}",
        title=f"drawn scene {digest}",
        core=template.format(**fields),
        motifs=tuple(fields[name] for name in fields if name in motif_fields),
        input=InputMode.FRAGMENT,
        split=Split.UNSEEN,
        fields=dict(fields),
    )


def scenes(scene_set: SceneSet | str | os.PathLike[str] | None = None) -> Any:
    """A Hypothesis strategy of unseen scenes shaped like *scene_set*'s (default: shipped).

    Example::

        @given(pytest_scenelora.strategies.scenes("fixtures/scenes.yaml"))
        def test_holds(scene): ...
    """
    from hypothesis import strategies as st

    if not isinstance(scene_set, SceneSet):
        scene_set = load_scenes(Path(scene_set) if scene_set is not None else None)
    vocab = novel_vocabularies(scene_set)
    training = {canonical_json(dict(s.fields)) for s in scene_set.split(Split.TRAIN)}
    return (
        st.fixed_dictionaries({name: st.sampled_from(words) for name, words in vocab.items()})
        .filter(lambda fields: canonical_json(fields) not in training)
        .map(lambda fields: scene_from_fields(scene_set, fields))
    )
