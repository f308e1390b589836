"""The register map: outputs and register centroids projected to two dimensions.

The plane is the top two principal axes of the register centroids themselves (PCA by
SVD, in the centred space the register classifier works in), not of any one adapter's
outputs: every adapter's points land in the same coordinates, so one map can show all
the voices of a scene around the same centroids. Signs are fixed (each axis's largest
component is positive), so the map is the same on every run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .scoring import normalize_rows

if TYPE_CHECKING:
    from .checks.registers import RegisterSpace
    from .verdict import Verdict

__all__ = ["register_map", "with_register_map"]


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
