"""``style_survives_topic_shift``: an adapter keeps its register when the topic changes.

On prompts about other topics, a sample succeeds when it both *follows the new topic*
(closer to the topic than to the adapter's home scene: an adapter that ignores the
prompt and recites its scene has shown nothing about style) and *keeps the adapter's
register* (nearest-centroid classification, as in :mod:`.registers`). The verdict is
on the success rate pooled over topics; the detail holds each topic's rate, and the
worst sample is taken from the worst topic.

A topic is given as one vector (its description embedded) or as a stack of vectors (its
reference texts in every register), compared by mean cosine
(:func:`~pytest_scenelora.scoring.embedders.similarity_to`). The stack works for both scorers
(98.7% of the shipped training topic texts follow their topic with either); the
description works for all-MiniLM-L6-v2 (98.7%) but not for char n-grams (63%: one short
sentence shares few n-grams with a paragraph). Never pass a topic's *centroid* against
the home scene's single core: a centroid is closer to any text than texts are to each
other, so even an adapter reciting its scene "follows" it (the trained tiny Δ42
adapters' scene outputs: 27-42% with MiniLM, 57-67% with char n-grams, against 6-31%
for the other two forms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..scoring.embedders import similarity_to
from ..scoring.verdict import CheckInputError, Verdict, decide, pick_worst
from .context import Request
from .kind import CheckKind, Param
from .registers import REGISTER_PARAM, RegisterSpace

if TYPE_CHECKING:
    from ..specs import CheckSpec
    from .context import CheckContext

__all__ = ["style_survives_topic_shift"]


def _check_inputs(subject: str, outputs_by_topic: Mapping[str, np.ndarray],
                  topic_vecs: Mapping[str, np.ndarray],
                  texts_by_topic: Mapping[str, Sequence[str]] | None) -> None:
    where = f"style_survives_topic_shift[{subject}]"
    if not outputs_by_topic:
        raise CheckInputError(f"{where}: no topics to judge")
    unknown = [t for t in outputs_by_topic if t not in topic_vecs]
    if unknown:
        raise CheckInputError(f"{where}: no topic vector for {unknown[0]!r}")
    for topic, raw in outputs_by_topic.items():
        outputs = len(np.atleast_2d(np.asarray(raw)))
        topic_texts = None if texts_by_topic is None else texts_by_topic.get(topic)
        if topic_texts is not None and len(topic_texts) != outputs:
            raise CheckInputError(f"{where}: {len(topic_texts)} texts for {outputs} outputs "
                                  f"on topic {topic!r}")


def style_survives_topic_shift(
    outputs_by_topic: Mapping[str, np.ndarray],
    topic_vecs: Mapping[str, np.ndarray],
    home_scene_vec: np.ndarray,
    space: RegisterSpace,
    register: str,
    *,
    threshold: float,
    seed: int,
    subject: str,
    texts_by_topic: Mapping[str, Sequence[str]] | None = None,
    topic_titles: Mapping[str, str] | None = None,
    confidence: float = 0.95,
) -> Verdict:
    """Pass when, pooled over topics, the rate of samples that follow their topic *and*
    keep *register* is confidently ≥ *threshold*.

    ``topic_vecs[topic]`` and *home_scene_vec* are each one vector or a stack of reference
    vectors (mean cosine); a sample follows its topic when it is more similar to the topic
    than to the home scene.

    Fails for an adapter that recites its home scene whatever the prompt, and for one
    whose voice dissolves into another register (or the base's) off its home scene.
    """
    _check_inputs(subject, outputs_by_topic, topic_vecs, texts_by_topic)
    space.index(register)
    success_parts, evidence_parts, contexts, texts = [], [], [], []
    topic_of: list[str] = []
    per_topic: dict[str, float] = {}
    followed_total = kept_total = 0
    for topic, raw in outputs_by_topic.items():
        vecs = np.atleast_2d(np.asarray(raw, dtype=np.float32))
        topic_margin = similarity_to(vecs, topic_vecs[topic]) - similarity_to(vecs, home_scene_vec)
        labels = space.classify(vecs)
        reg_margin = space.margins(vecs, register)
        follows = topic_margin > 0
        keeps = np.array([label == register for label in labels], dtype=bool)
        ok = follows & keeps
        followed_total += int(follows.sum())
        kept_total += int(keeps.sum())
        per_topic[topic] = float(ok.mean())
        success_parts.append(ok.astype(np.float64))
        evidence_parts.append(np.minimum(topic_margin, reg_margin))
        title = topic_titles.get(topic, topic) if topic_titles else topic
        for k in range(len(vecs)):
            contexts.append({"topic": title, "nearest register": labels[k],
                             "topic margin": round(float(topic_margin[k]), 4),
                             "register margin": round(float(reg_margin[k]), 4)})
        topic_texts = None if texts_by_topic is None else texts_by_topic.get(topic)
        texts.extend(topic_texts if topic_texts is not None else [None] * len(vecs))
        topic_of.extend([topic] * len(vecs))
    success = np.concatenate(success_parts)
    evidence = np.concatenate(evidence_parts)
    n = len(success)

    def topic_rank(topic: str) -> tuple[float, float]:
        idx = [i for i, t in enumerate(topic_of) if t == topic]
        return (per_topic[topic], float(evidence[idx].mean()))

    worst_topic = min(per_topic, key=topic_rank)
    in_worst_topic = [i for i, t in enumerate(topic_of) if t == worst_topic]
    worst = pick_worst(success, evidence=evidence, among=in_worst_topic,
                       texts=texts if texts_by_topic is not None else None, contexts=contexts)
    worst_title = topic_titles.get(worst_topic, worst_topic) if topic_titles else worst_topic
    detail: dict[str, Any] = {
        "register": register,
        "per_topic": per_topic,
        "worst_topic": worst_topic,
        "followed_topic": followed_total / n,
        "kept_register": kept_total / n,
        "reason": (f"followed the topic in {followed_total} of {n} samples, kept register "
                   f"{register!r} in {kept_total} of {n}; worst topic {worst_title!r} "
                   f"at {per_topic[worst_topic]:.0%}"),
    }
    return decide("style_survives_topic_shift", subject, success, threshold, higher_is_better=True,
                  seed=seed, rate=True, confidence=confidence, detail=detail, worst=worst,
                  texts=texts if texts_by_topic is not None else None,
                  clusters=topic_of)


def topic_vecs(context: CheckContext, topic: str) -> Any:
    """What a topic means: its reference texts in every register (a stack of vectors).

    A one-sentence description is a thin target (char n-grams barely match it); the
    registers' references on the topic are many texts about it in every voice. A topic
    without references falls back to its description.
    """
    world = context.world
    texts = [r.text for reg in world.registers.values() for r in reg.references if r.topic == topic]
    return context.embed(texts or [world.topics[topic].description])


def run(context: CheckContext, spec: CheckSpec, adapter: str) -> Verdict:
    world = context.world
    topics = list(spec["topics"] or world.topics)
    texts = context.texts([Request(adapter, context.topic_prompt(world.topics[t]), spec["samples"])
                           for t in topics])
    home = context.scene(spec, adapter)
    return style_survives_topic_shift(
        {t: context.embed(x) for t, x in zip(topics, texts, strict=True)},
        {t: topic_vecs(context, t) for t in topics},
        context.embed_one(home.core),
        context.register_space(),
        context.register(spec, adapter),
        threshold=spec["threshold"], seed=context.seed, subject=adapter,
        texts_by_topic=dict(zip(topics, texts, strict=True)),
        topic_titles={t: world.topics[t].title for t in topics},
    )


KIND = CheckKind(
    name="style_survives_topic_shift",
    params={
        "threshold": Param(float, 0.66, 0.0, 1.0, "share of samples on the topic AND in the register"),
        "samples": Param(int, 4, 1, 256, "samples per topic"),
        "topics": Param(list, None, help="topic ids (default: every topic)"),
        "register": REGISTER_PARAM,
    },
    tolerance=0.05,  # success rate
    run=run,
    help="on other topics the samples follow the topic and keep the adapter's register",
)
