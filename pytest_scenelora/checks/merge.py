"""``merge_equivalence``: a merged (or combined) adapter computes what its parts compute.

Merging LoRA factors into the base weights, or folding several adapters into one
weighted combination, is pure arithmetic: the logits must match the unmerged adapter's
up to floating-point rounding. A wrong scale (alpha/r applied twice or not at all), a
transposed factor or a missed module shows up as a logit difference far above rounding.
This check has no sampling noise, so it is decided on the worst probe, not an interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..scenes import excerpt
from ..scoring.verdict import CheckInputError, Status, Verdict, pick_worst
from ..specs import SuiteError
from .kind import CheckKind, NotApplicable, Param

if TYPE_CHECKING:
    from ..specs import CheckSpec
    from .context import CheckContext

__all__ = ["max_logit_difference", "merge_equivalence"]


def max_logit_difference(unmerged_logits: np.ndarray, merged_logits: np.ndarray) -> np.ndarray:
    """Per probe, the largest absolute difference between the two logit arrays.

    Arrays are ``(probes, ...)`` (vocab, or positions × vocab); everything after the
    first axis is reduced. A NaN anywhere in a probe makes its difference NaN.
    """
    a = np.asarray(unmerged_logits, dtype=np.float64)
    b = np.asarray(merged_logits, dtype=np.float64)
    if a.shape != b.shape:
        raise CheckInputError(f"unmerged and merged logits differ in shape: {a.shape} and {b.shape}")
    if a.ndim == 1:
        a, b = a[None], b[None]
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b).reshape(len(a), -1)
    bad = ~np.isfinite(diff).all(axis=1)
    out = diff.max(axis=1) if diff.shape[1] else np.zeros(len(a))
    out[bad] = math.nan
    return out


def merge_equivalence(
    unmerged_logits: np.ndarray,
    merged_logits: np.ndarray,
    *,
    tolerance: float,
    subject: str,
    prompts: Sequence[str] | None = None,
) -> Verdict:
    """Pass when every probe's max |logit difference| is at most *tolerance* (lower is better).

    The score is the maximum over probes (no interval: the computation is deterministic,
    so one bad probe is a real defect, not noise). A deliberately rescaled merge fails.
    """
    diffs = max_logit_difference(unmerged_logits, merged_logits)
    if diffs.size == 0:
        raise CheckInputError(f"merge_equivalence[{subject}]: no probes to compare")
    finite = bool(np.isfinite(diffs).all())
    worst_diff = float(diffs.max()) if finite else math.nan
    status = Status.PASS if finite and worst_diff <= tolerance else Status.FAIL
    scale = np.abs(np.asarray(unmerged_logits, dtype=np.float64))
    detail = {
        "statistic": "max",
        "probes_over_tolerance": int((~(diffs <= tolerance)).sum()),
        "max_abs_logit": float(np.nanmax(scale)) if np.isfinite(scale).any() else None,
    }
    if not finite:
        detail["reason"] = "some logits are not finite numbers (NaN or inf)"
    contexts = None if prompts is None else [{"probe": p} for p in prompts]
    worst = pick_worst(diffs, higher_is_better=False, contexts=contexts)
    return Verdict(
        check="merge_equivalence",
        subject=subject,
        score=worst_diff,
        ci_low=worst_diff,
        ci_high=worst_diff,
        threshold=float(tolerance),
        higher_is_better=False,
        status=status,
        samples=tuple(float(d) for d in diffs),
        n=int(diffs.size),
        worst=worst,
        detail=detail,
    )


def run(context: CheckContext, spec: CheckSpec, adapter: str) -> Verdict:
    """The adapter (scaled by ``weight``) unmerged and merged, on the same probes."""
    if context.quantization != "none":
        # a merge into quantized weights re-rounds them, and a checkpoint on disk would be
        # compared with a quantized base: neither says anything about the adapter
        raise NotApplicable(f"merge_equivalence needs the base unquantized, and this run loads it "
                            f"--quantize {context.quantization}; rerun with --quantize none to test merges")
    probes = context.probes(spec["probes"], adapter)
    weight = spec["weight"]

    def compute() -> Any:
        library = context.library
        name = adapter
        if weight != 1.0:
            name = f"{adapter}×{weight:g}"
            if name not in library:
                library.combine(name, {adapter: weight})
        merged = load_merged(context, spec) if spec["merged_model"] else library.merged(name)
        return np.stack([library.logits(probes, name).numpy(), library.logits(probes, model=merged).numpy()])

    if spec["merged_model"]:  # a checkpoint on disk: compared afresh on every run
        unmerged, merged_logits = compute()
    else:
        unmerged, merged_logits = context.cached_logits("unmerged-and-merged-logits", adapter, probes,
                                                        compute, weight=weight)
    return merge_equivalence(unmerged, merged_logits, tolerance=spec["threshold"], subject=adapter,
                             prompts=probes)


def load_merged(context: CheckContext, spec: CheckSpec) -> Any:
    """The suite's ``merged_model`` folder, loaded like the base; refused (``path:line``)
    unless it is safetensors without code of its own and has the base's shape."""
    from transformers import AutoModelForCausalLM

    from ..engine.weights import check_model_folder, read_config

    suite = context.suite
    path = Path(spec["merged_model"])
    path = path if path.is_absolute() else (suite.path.parent / path)

    class Refused(SuiteError):
        def __init__(self, message: str) -> None:
            super().__init__(suite.path, spec.line_of("merged_model"),
                             f"check {excerpt(spec.name)}: {message}")

    # safetensors only, no code of its own: a suite (and so a pull request) names this folder
    check_model_folder(path, "merged_model", Refused)
    config = read_config(path, "merged_model", Refused)
    base = context.library.base
    # a merge of this base has the base's shape; anything else is not what the check
    # compares (and a config may ask for a model far larger than the base)
    base_config = base.model.config.to_dict()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        if key in base_config and config.get(key) != base_config[key]:
            raise Refused(f"merged_model {path} has {key} {excerpt(config.get(key))}, the base has "
                          f"{base_config[key]!r}; give a merge of this base")
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=base.model.dtype, local_files_only=True, use_safetensors=True,
            trust_remote_code=False).to(base.device).eval()
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise Refused(f"merged_model {path} could not be loaded: {first}") from None


KIND = CheckKind(
    name="merge_equivalence",
    params={
        "threshold": Param(float, 1e-3, 0.0, 10.0, "largest allowed logit difference"),
        "probes": Param(int, 8, 1, 256, "probe prompts"),
        "weight": Param(float, 1.0, -10.0, 10.0, "weight of the adapter in the merge"),
        "merged_model": Param(str, None, help="a merged checkpoint to verify (default: merge here)"),
    },
    tolerance=1e-3,  # logit units (lower is better: a rise regresses)
    run=run,
    help="the merged adapter computes the unmerged adapter's logits",
)
