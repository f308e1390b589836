"""``adapter_active``: the adapter changes what the base would say next.

Every other check is meaningless if the adapter never took effect (a zero adapter, one
that failed to load, or one switched off by mistake): the outputs would then be the
base's, and a lenient scene or register check might still pass on them. This check
measures, on probe prompts, the KL divergence of the adapter's next-token distribution
from the base's, and passes when its mean is confidently above a floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..scoring.verdict import CheckInputError, Verdict, decide
from .kind import CheckKind, Param

if TYPE_CHECKING:
    from ..specs import CheckSpec
    from .context import CheckContext

__all__ = ["adapter_active", "log_softmax", "next_token_kl"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, computed stably in float64."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_kl(adapter_logits: np.ndarray, base_logits: np.ndarray) -> np.ndarray:
    """KL(adapter ‖ base) of next-token distributions, one value per probe.

    Both arrays are ``(probes, vocab)`` logits at each probe's last position (one
    ``(vocab,)`` row counts as one probe); pass torch tensors as ``t.float().cpu().numpy()``.
    Computed from log-softmax in float64, so huge logits do not overflow; tiny negative
    results of rounding are clipped to 0. Non-finite logits give NaN, which fails the check.
    """
    p = np.atleast_2d(np.asarray(adapter_logits, dtype=np.float64))
    q = np.atleast_2d(np.asarray(base_logits, dtype=np.float64))
    if p.shape != q.shape or p.ndim != 2:
        raise CheckInputError(
            f"adapter and base logits must both be (probes, vocab); got {p.shape} and {q.shape}"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        log_p, log_q = log_softmax(p), log_softmax(q)
        kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return np.where(np.isnan(kl), np.nan, np.maximum(kl, 0.0))


def adapter_active(
    kl_per_probe: Sequence[float] | np.ndarray,
    *,
    floor: float,
    seed: int,
    subject: str,
    prompts: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> Verdict:
    """Pass when the mean KL(adapter ‖ base) over probes is confidently above *floor*.

    Fails for an adapter whose factors are zero (KL exactly 0), one that was never
    applied, or one so weak that it barely moves the distribution; the worst sample is
    the probe on which the adapter changed the least.
    """
    kl = np.asarray(kl_per_probe, dtype=np.float64).ravel()
    if (kl < 0).any():
        raise CheckInputError(f"adapter_active[{subject}]: KL divergences cannot be negative")
    contexts = None if prompts is None else [{"probe": p} for p in prompts]
    finite = kl[np.isfinite(kl)]
    detail = {
        "floor": floor,
        "max_kl": float(finite.max()) if finite.size else None,
        "probes_below_floor": int((finite < floor).sum()),
    }
    return decide("adapter_active", subject, kl, floor, higher_is_better=True, seed=seed,
                  confidence=confidence, contexts=contexts, detail=detail)


def run(context: CheckContext, spec: CheckSpec, adapter: str) -> Verdict:
    """The KL of the adapter's next-token distribution from the base's, on probe prompts
    (the logits cached: a warm run loads no model)."""
    probes = context.probes(spec["probes"], adapter)
    n = len(probes)

    def compute() -> Any:
        return context.logits(probes * 2, [adapter] * n + [None] * n)

    logits = context.cached_logits("adapter-and-base-next-token-logits", adapter, probes, compute)
    kl = next_token_kl(logits[:n], logits[n:])
    return adapter_active(kl, floor=spec["threshold"], seed=context.seed, subject=adapter, prompts=probes)


KIND = CheckKind(
    name="adapter_active",
    params={
        "threshold": Param(float, 0.02, 0.0, 100.0, "KL floor (nats) the mean must clear"),
        "probes": Param(int, 12, 2, 256, "probe prompts"),
    },
    tolerance=0.02,  # nats of KL
    run=run,
    help="the adapter changes the base's next-token distribution",
)
