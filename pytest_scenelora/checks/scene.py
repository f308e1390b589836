"""``scene_holds``: output produced for a scene stays on that scene's meaning.

The score is contrastive, never a raw cosine: sentence embeddings of unrelated texts in
one language often have cosines above 0.7, so "cosine to the scene is high" says little.
Instead, per sample, the margin is the similarity to the scene minus the largest
similarity to any distractor scene (other scenes of the same structure), and, for scenes
given as a bare hypertoken, also minus the similarity to what the base alone says for
the same prompts: an adapter that adds nothing beyond the base has not learnt the scene.

"Similarity to what the base says" is the output's mean cosine with the base's outputs,
text for text, as the scene and distractors are one text each. The cosine with the
base outputs' normalised centroid would be rigged: a centroid of many texts is closer to
any single text than texts are to each other. Measured with all-MiniLM-L6-v2 on 24 tiny
base outputs for ``Scene: Δ42``: Δ42's own training texts have cosine 0.39 with that
centroid but 0.21 on average with the outputs themselves; against the centroid the
trained Δ42 adapters' samples held the scene 29-42% of the time, against the mean 54-58%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..prompts import InputMode
from ..scoring.embedders import cosine_matrix, similarity_to
from ..scoring.verdict import CheckInputError, Verdict, decide
from .context import Request
from .kind import CheckKind, Param

if TYPE_CHECKING:
    from ..scenes import Scene
    from ..specs import CheckSpec
    from .context import CheckContext

__all__ = ["BASE_COMPETITOR", "scene_contrast", "scene_holds", "scene_margins"]

#: The name under which the base's own outputs compete with the distractor scenes.
BASE_COMPETITOR = "(base)"


def scene_margins(
    output_vecs: np.ndarray,
    scene_vec: np.ndarray,
    distractor_vecs: np.ndarray | None,
    base_vecs: np.ndarray | None = None,
) -> np.ndarray:
    """cos(output, scene) − max over competitors of cos(output, competitor), per sample.

    Competitors are the distractor scenes (rows of *distractor_vecs*) and, when
    *base_vecs* (the base model's outputs for the same prompts) are given, what the base
    says: the output's mean cosine with those outputs. Positive means closer to the scene
    than to anything else on offer.
    """
    return scene_contrast(output_vecs, scene_vec, distractor_vecs, base_vecs)[0]


def scene_contrast(
    output_vecs: np.ndarray,
    scene_vec: np.ndarray,
    distractor_vecs: np.ndarray | None,
    base_vecs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scene_margins`, plus per sample the closest competitor: an index into
    *distractor_vecs*, or ``-1`` for the base's outputs."""
    outputs = np.atleast_2d(np.asarray(output_vecs, dtype=np.float32))
    columns = []
    if distractor_vecs is not None and len(distractor_vecs):
        columns.append(cosine_matrix(outputs, np.atleast_2d(np.asarray(distractor_vecs, dtype=np.float32))))
    n_distractors = columns[0].shape[1] if columns else 0
    if base_vecs is not None and len(base_vecs):
        columns.append(similarity_to(outputs, np.atleast_2d(base_vecs))[:, None])
    if not columns:
        raise CheckInputError("a scene margin needs something to contrast with: give distractor "
                              "scenes (other scenes of the same structure) or the base's outputs")
    other = np.concatenate(columns, axis=1).astype(np.float64)
    own = similarity_to(outputs, scene_vec)
    best = other.argmax(axis=1)
    margins = own - other[np.arange(len(outputs)), best]
    return margins, np.where(best >= n_distractors, -1, best)


def scene_holds(
    output_vecs: np.ndarray,
    scene_vec: np.ndarray,
    distractor_vecs: np.ndarray | None,
    base_vecs: np.ndarray | None = None,
    *,
    threshold: float = 0.05,
    seed: int,
    subject: str,
    scene: str | None = None,
    distractor_names: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    contexts: Sequence[Mapping[str, Any]] | None = None,
    confidence: float = 0.95,
) -> Verdict:
    """Pass when the mean scene margin is confidently at least *threshold*.

    Fails when outputs drift to another scene, to generic text the base would write
    anyway, or to nothing (an empty output has margin 0). The worst sample names the
    competitor it was closest to.
    """
    margins, rival_index = scene_contrast(output_vecs, scene_vec, distractor_vecs, base_vecs)
    names = list(distractor_names) if distractor_names is not None else None
    if names is not None and distractor_vecs is not None and len(names) != len(distractor_vecs):
        raise CheckInputError(f"scene_holds[{subject}]: {len(names)} distractor names for "
                              f"{len(distractor_vecs)} distractor vectors")

    def rival_name(i: int) -> str:
        if i < 0:
            return BASE_COMPETITOR
        return names[i] if names is not None else f"distractor #{i}"

    rivals = [rival_name(int(i)) for i in rival_index]
    per_sample = [
        {**(dict(contexts[k]) if contexts is not None else {}), "closest other": rivals[k]}
        for k in range(len(margins))
    ]
    counts: dict[str, int] = {}
    for name in (r for r, m in zip(rivals, margins, strict=True) if m <= 0):
        counts[name] = counts.get(name, 0) + 1
    detail = {
        "scene": scene,
        "held": float((margins > 0).mean()),
        "lost_to": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "base_compared": base_vecs is not None and len(base_vecs) > 0,
    }
    return decide("scene_holds", subject, margins, threshold, higher_is_better=True,
                  seed=seed, confidence=confidence, texts=texts, contexts=per_sample, detail=detail)


@dataclass(frozen=True)
class SceneSamples:
    """An adapter's samples for a scene, their vectors, and what they are told apart from."""

    scene: Scene
    texts: list[str]
    vecs: Any
    base_vecs: Any  # the base's samples for a hypertoken prompt (None for a text prompt)
    scene_vec: Any
    distractor_names: list[str]
    distractor_vecs: Any


def gather_scene_samples(context: CheckContext, spec: CheckSpec, adapter: str) -> SceneSamples:
    """The adapter's samples for its scene (and the base's, for a hypertoken prompt): one batch."""
    scene = context.scene(spec, adapter)
    prompt = context.scene_prompt(scene)
    token = scene.input is InputMode.TOKEN
    n = spec["samples"]
    texts = context.texts([Request(adapter, prompt, n)] + ([Request(None, prompt, n)] if token else []))
    others = [s for s in context.world.scenes if s.id != scene.id]
    return SceneSamples(
        scene=scene,
        texts=texts[0],
        vecs=context.embed(texts[0]),
        base_vecs=context.embed(texts[1]) if token else None,
        scene_vec=context.embed_one(scene.core),
        distractor_names=[s.id for s in others],
        distractor_vecs=context.embed([s.core for s in others]),
    )


def run(context: CheckContext, spec: CheckSpec, adapter: str) -> Verdict:
    s = gather_scene_samples(context, spec, adapter)
    return scene_holds(s.vecs, s.scene_vec, s.distractor_vecs, s.base_vecs,
                       threshold=spec["threshold"], seed=context.seed, subject=adapter,
                       scene=s.scene.id, distractor_names=s.distractor_names, texts=s.texts)


#: A check's ``scene:``: the scene its samples are asked for.
SCENE_PARAM = Param(str, None, help="scene id (default: the adapter's scene)")

KIND = CheckKind(
    name="scene_holds",
    params={
        "threshold": Param(float, 0.1, -1.0, 1.0, "contrastive margin the mean must clear"),
        "samples": Param(int, 12, 2, 512, "samples per prompt"),
        "scene": SCENE_PARAM,
    },
    tolerance=0.02,  # contrastive margin
    run=run,
    help="samples stay on the adapter's scene, against the other scenes (and the base)",
)
