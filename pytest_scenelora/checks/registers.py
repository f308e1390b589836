"""``registers_unpack``: one scene, spoken by k role adapters, in k recognisable registers.

Register identity is judged by a nearest-centroid classifier built from reference texts
of each register (:func:`register_centroids`). All references share a large common
component (same language, same kinds of topics), which dominates raw cosines; the space
is therefore centred on the mean of the register means before centroids are taken, so
what is left is what tells the registers apart.

Each sample has two margins: its scene margin (see :mod:`.scene`) and its register
margin (cosine to its own register's centroid minus the best other's; positive means
classified to its own register). Its *weaker* margin, the smaller of the two, says how
clearly it does both. ``registers_unpack`` judges the mean of the weaker margins against
its threshold, as ``scene_holds`` judges its mean margin; ``unseen_scenes`` judges the
share of samples with both margins positive.

Why a mean margin and not that share: on a real pretrained base (SmolLM2-135M) a poetic
voice that learnt no scene, or no register of its own, reads as poetic and on Δ42 in 67-71%
of its samples, barely, against 79% for the good logic voice, so no threshold on the
share separates them at 48 samples; the mean weaker margin does (good voices' lower
bounds 0.13 and up, those controls' upper bounds 0.07: README, "Thresholds, calibrated").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..scoring.embedders import normalize_rows
from ..scoring.verdict import CheckInputError, Verdict, decide
from .kind import CheckKind, Param
from .scene import SCENE_PARAM, gather_scene_samples, scene_margins

if TYPE_CHECKING:
    from ..specs import CheckSpec
    from .context import CheckContext

__all__ = ["EMPTY", "RegisterSpace", "register_centroids", "register_holds", "register_map",
           "registers_unpack", "with_register_map"]

#: What an empty output (a zero vector) is classified as: no register at all.
EMPTY = "(empty)"


@dataclass(frozen=True, eq=False)
class RegisterSpace:
    """Register centroids in a space centred on the references' common component.

    ``origin`` is the mean of the register means of the (unit) reference vectors;
    ``centroids[i]`` is the unit direction of register ``names[i]`` from that origin.
    """

    names: tuple[str, ...]
    origin: np.ndarray
    centroids: np.ndarray
    counts: tuple[int, ...] = ()

    def index(self, register: str) -> int:
        try:
            return self.names.index(register)
        except ValueError:
            raise CheckInputError(f"register {register!r} is not one of the reference registers "
                                  f"{', '.join(map(repr, self.names))}") from None

    def similarities(self, vecs: np.ndarray) -> np.ndarray:
        """Cosine of each (centred) row with each register centroid: ``(n, registers)``.
        Zero rows (empty texts) get similarity 0 to every register."""
        arr = normalize_rows(vecs)
        if arr.shape[1] != self.origin.shape[0]:
            raise CheckInputError(f"vectors of width {arr.shape[1]} cannot be compared with register "
                                  f"centroids of width {self.origin.shape[0]}; use one scorer for both")
        empty = ~arr.any(axis=1)
        sims = normalize_rows(arr - self.origin) @ self.centroids.T
        sims[empty] = 0.0
        return sims

    def classify(self, vecs: np.ndarray) -> list[str]:
        """The nearest register of each row (:data:`EMPTY` for an empty text)."""
        arr = normalize_rows(vecs)
        best = self.similarities(arr).argmax(axis=1)
        empty = ~arr.any(axis=1)
        return [EMPTY if e else self.names[b] for b, e in zip(best, empty, strict=True)]

    def margins(self, vecs: np.ndarray, own: str | Sequence[str]) -> np.ndarray:
        """cos to the own register's centroid − the best other register's, per row.

        Positive means classified as *own*. An empty text gets −2, the lowest a
        difference of cosines can be. *own* is one register, or one per row.
        """
        sims = self.similarities(vecs)
        owns = [own] * len(sims) if isinstance(own, str) else list(own)
        if len(owns) != len(sims):
            raise CheckInputError(f"{len(owns)} own registers for {len(sims)} vectors")
        idx = np.array([self.index(o) for o in owns], dtype=int)
        rows = np.arange(len(sims))
        own_sim = sims[rows, idx]
        others = sims.copy()
        others[rows, idx] = -np.inf
        out = (own_sim - others.max(axis=1)).astype(np.float64)
        out[~normalize_rows(vecs).any(axis=1)] = -2.0
        return out


def register_centroids(reference_vecs_by_register: Mapping[str, np.ndarray]) -> RegisterSpace:
    """Build the register space from each register's reference vectors.

    The origin is the mean of the register means, so a register with more references
    does not pull the origin towards itself; with the shipped references (96 per
    register, 4 per topic) that equals the mean of all references, and the topic
    component, spread evenly over every register, cancels out.
    """
    if len(reference_vecs_by_register) < 2:
        raise CheckInputError("a register classifier needs references for at least two registers")
    names = tuple(reference_vecs_by_register)
    means = []
    counts = []
    for name in names:
        refs = normalize_rows(reference_vecs_by_register[name])
        refs = refs[refs.any(axis=1)]
        if len(refs) == 0:
            raise CheckInputError(f"register {name!r} has no (non-empty) reference texts")
        means.append(refs.mean(axis=0))
        counts.append(len(refs))
    stacked = np.stack(means)
    origin = stacked.mean(axis=0)
    centroids = normalize_rows(stacked - origin)
    return RegisterSpace(names=names, origin=origin.astype(np.float32), centroids=centroids,
                         counts=tuple(counts))


def register_holds(
    output_vecs: np.ndarray,
    register: str,
    space: RegisterSpace,
    scene_margins: Sequence[float] | np.ndarray | None = None,
    *,
    threshold: float,
    seed: int,
    subject: str,
    texts: Sequence[str] | None = None,
    contexts: Sequence[Mapping[str, Any]] | None = None,
    confidence: float = 0.95,
    check: str = "registers_unpack",
    by: Literal["margin", "rate"] = "margin",
) -> Verdict:
    """One adapter judged against all registers: its samples must speak *register* and
    (when *scene_margins* are given) hold the scene.

    *by* is what the verdict is on: ``"margin"``, the mean of each sample's weaker margin
    (the smaller of its scene margin and its register margin; ``registers_unpack``), or
    ``"rate"``, the share of samples classified to *register* with a positive scene margin
    (``unseen_scenes``, whose threshold is a share). Either way the detail says how many
    samples held the register and the scene.

    This is the check for a suite run on a single adapter (``--adapter Δ42_poetic``):
    the other roles' adapters need not be present, only the other registers' references.
    """
    if by not in ("margin", "rate"):
        raise CheckInputError(f"{check}[{subject}]: by={by!r}; judge by 'margin' or 'rate'")
    vecs = np.atleast_2d(np.asarray(output_vecs, dtype=np.float32))
    n = len(vecs)
    space.index(register)
    labels = space.classify(vecs)
    reg_margin = space.margins(vecs, register)
    in_register = np.array([label == register for label in labels], dtype=bool)
    if scene_margins is not None:
        scene = np.asarray(scene_margins, dtype=np.float64).ravel()
        if len(scene) != n:
            raise CheckInputError(f"{check}[{subject}]: {len(scene)} scene margins for {n} outputs")
        on_scene = scene > 0
        evidence = np.minimum(scene, reg_margin)
    else:
        scene, on_scene, evidence = None, np.ones(n, dtype=bool), reg_margin
    success = (in_register & on_scene).astype(np.float64)
    per_sample = []
    for k in range(n):
        ctx: dict[str, Any] = dict(contexts[k]) if contexts is not None else {}
        ctx["nearest register"] = labels[k]
        ctx["register margin"] = round(float(reg_margin[k]), 4)
        if scene is not None:
            ctx["scene margin"] = round(float(scene[k]), 4)
        per_sample.append(ctx)
    confusion: dict[str, int] = {}
    for label in labels:
        confusion[label] = confusion.get(label, 0) + 1
    detail: dict[str, Any] = {
        "register": register,
        "classified_as": dict(sorted(confusion.items(), key=lambda kv: (-kv[1], kv[0]))),
        "register_held": float(in_register.mean()),
        "scene_held": None if scene is None else float(on_scene.mean()),
    }
    reasons = [f"in register {register!r} for {int(in_register.sum())} of {n} samples"]
    others = {k: v for k, v in detail["classified_as"].items() if k != register}
    if others:
        top = next(iter(others))
        reasons[0] += f" (mostly read as {top!r} otherwise)"
    if scene is not None:
        reasons.append(f"on the scene for {int(on_scene.sum())} of {n}")
    detail["reason"] = "; ".join(reasons)
    rate = by == "rate"
    return decide(check, subject, success if rate else evidence, threshold, higher_is_better=True,
                  seed=seed, rate=rate, confidence=confidence, texts=texts, contexts=per_sample,
                  detail=detail, evidence=evidence)


def registers_unpack(
    outputs_by_adapter: Mapping[str, np.ndarray],
    register_of: Mapping[str, str],
    space: RegisterSpace,
    scene_margins_by_adapter: Mapping[str, Sequence[float] | np.ndarray] | None,
    *,
    threshold: float,
    seed: int,
    texts_by_adapter: Mapping[str, Sequence[str]] | None = None,
    confidence: float = 0.95,
) -> list[Verdict]:
    """One verdict per adapter (in the order given): its outputs for the scene hold the
    scene and land in its own register, by a mean weaker margin confidently ≥ *threshold*.

    Fails when an adapter speaks the wrong register (or no recognisable one: all the
    adapters collapsed into one voice), or when it holds its register but drifts off
    the scene.
    """
    missing = [a for a in outputs_by_adapter if a not in register_of]
    if missing:
        raise CheckInputError(f"registers_unpack: no register given for adapter {missing[0]!r}")
    verdicts = []
    for adapter, vecs in outputs_by_adapter.items():
        margins = None
        if scene_margins_by_adapter is not None:
            if adapter not in scene_margins_by_adapter:
                raise CheckInputError(f"registers_unpack: no scene margins for adapter {adapter!r}")
            margins = scene_margins_by_adapter[adapter]
        texts = None if texts_by_adapter is None else texts_by_adapter.get(adapter)
        verdicts.append(register_holds(vecs, register_of[adapter], space, margins, threshold=threshold,
                                       seed=seed, subject=adapter, texts=texts, confidence=confidence))
    return verdicts


# ------------------------------------------------------------------ register map
# The register map: outputs and register centroids projected to two dimensions.
#
# The plane is the top two principal axes of the register centroids themselves (PCA by
# SVD, in the centred space the register classifier works in), not of any one adapter's
# outputs: every adapter's points land in the same coordinates, so one map can show all
# the voices of a scene around the same centroids. Signs are fixed (each axis's largest
# component is positive), so the map is the same on every run.


def _plane(centroids: np.ndarray) -> tuple[np.ndarray, float]:
    centred = centroids - centroids.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    basis = vt[:2]
    if basis.shape[0] < 2:  # one register only: a degenerate but drawable plane
        basis = np.vstack([basis, np.zeros_like(basis[0])])
    for row in basis:
        k = int(np.argmax(np.abs(row)))
        if row[k] < 0:
            row *= -1
    total = float((sing ** 2).sum())
    share = float((sing[:2] ** 2).sum() / total) if total > 0 else 1.0
    return basis, share


def register_map(space: RegisterSpace, output_vecs: np.ndarray) -> dict[str, Any]:
    """2-D coordinates of each output (None for an empty one), each centroid, and the
    nearest register of each output: JSON-ready, rounded to 4 places."""
    basis, share = _plane(np.asarray(space.centroids, dtype=np.float64))
    vecs = normalize_rows(np.atleast_2d(np.asarray(output_vecs, dtype=np.float32)))
    empty = ~vecs.any(axis=1)
    centred = normalize_rows(vecs - space.origin)
    points = centred.astype(np.float64) @ basis.T
    labels = space.classify(vecs)
    return {
        "axes": "principal axes of the register centroids",
        "explained": round(share, 4),
        "centroids": {name: [round(float(x), 4) for x in basis @ c]
                      for name, c in zip(space.names, np.asarray(space.centroids, dtype=np.float64),
                                         strict=True)},
        "points": [None if e else [round(float(x), 4), round(float(y), 4)]
                   for (x, y), e in zip(points, empty, strict=True)],
        "labels": labels,
    }


def with_register_map(verdict: Verdict, space: RegisterSpace, output_vecs: np.ndarray) -> Verdict:
    """*verdict* with its outputs' register map in ``detail["register_map"]``."""
    return replace(verdict, detail={**verdict.detail, "register_map": register_map(space, output_vecs)})


def run(context: CheckContext, spec: CheckSpec, adapter: str) -> Verdict:
    """The adapter's samples for its scene must hold the scene and speak its register."""
    s = gather_scene_samples(context, spec, adapter)
    margins = scene_margins(s.vecs, s.scene_vec, s.distractor_vecs, s.base_vecs)
    space = context.register_space()
    verdict = register_holds(s.vecs, context.register(spec, adapter), space, margins,
                             threshold=spec["threshold"], seed=context.seed, subject=adapter, texts=s.texts)
    return with_register_map(verdict, space, s.vecs)  # for the HTML report's register map


#: A check's ``register:``: the register its samples must speak.
REGISTER_PARAM = Param(str, None, help="register (default: the adapter's role)")

KIND = CheckKind(
    name="registers_unpack",
    params={
        "threshold": Param(float, 0.1, -1.0, 1.0, "mean of each sample's weaker margin (scene, register)"),
        "samples": Param(int, 12, 2, 512, "samples per prompt"),
        "scene": SCENE_PARAM,
        "register": REGISTER_PARAM,
    },
    tolerance=0.02,  # margin
    run=run,
    help="samples hold the scene and speak the adapter's register",
)
