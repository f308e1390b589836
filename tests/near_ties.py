"""Comparing sampled texts across batching, code paths or machines, as far as floats allow.

A batched forward and a one-row forward (or an AVX2 and an AVX-512 kernel) give logits that
differ by rounding. A draw can come out differently only at a step whose decision margin
(:func:`pytest_scenelora.engine.generation.decision_margin`: the logit change that could change
the pick) is below that difference; after it, the two texts go their own ways. So two
texts are *the same sample* when they are equal, or when they part at a step whose margin
is below :data:`LOGIT_TOLERANCE`. A text that parts where the pick was decided by a wide
margin is a real difference: another prompt, adapter, seed or sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The margin below which a pick counts as a near-tie. Two correct paths' logits differ by
#: ~1e-6 (float32 rounding, batched or not, AVX2 or AVX-512; ``test_library.py`` holds
#: them within 1e-4), and the sampler's own float32 sums blur a margin by up to ~1e-4.
LOGIT_TOLERANCE = 3e-4


@dataclass(frozen=True)
class Parting:
    """Where a traced sample and another text part: the steps that may hold the different
    pick (a multi-byte character spans several), and the smallest margin among them."""

    steps: range
    margin: float

    @property
    def near_tie(self) -> bool:
        return self.margin < LOGIT_TOLERANCE


def parting(trace: Sequence[tuple[int, float]], other: str, tokenizer: Any) -> Parting | None:
    """Where the sample traced as *trace* (each step's token and margin) stops being *other*
    (a decoded, stripped text); None when they are the same text."""
    tokens = [token for token, _ in trace]
    if _text(tokens, tokenizer) == other:
        return None
    clean = 0  # steps known to agree with *other*
    for step in range(1, len(tokens) + 1):
        text = _text(tokens[:step], tokenizer)
        if "\ufffd" in text[-1:]:  # a character cut between two byte tokens: undecided yet
            continue
        if not other.startswith(text.rstrip()):
            break
        if text == text.rstrip():  # trailing space could still be a part of another token
            clean = step
    else:
        step = len(tokens)
    steps = range(clean, max(step, clean + 1))
    margins = [trace[i][1] for i in steps if i < len(trace)]
    return Parting(steps, min(margins, default=float("inf")))


def token_parting(trace: Sequence[tuple[int, float]], other: Sequence[tuple[int, float]]) -> Parting | None:
    """Where two traced samples first pick different tokens; None when they never do. The
    margin is the larger of the two sides' there: a pick can only differ if both were close."""
    for step, ((mine, margin), (theirs, other_margin)) in enumerate(zip(trace, other, strict=False)):
        if mine != theirs:
            return Parting(range(step, step + 1), max(margin, other_margin))
    if len(trace) != len(other):  # same picks, different lengths: not the same decode at all
        step = min(len(trace), len(other))
        return Parting(range(step, step + 1), float("inf"))
    return None


def _text(tokens: Sequence[int], tokenizer: Any) -> str:
    eos = tokenizer.eos_token_id
    if eos in tokens:
        tokens = tokens[: list(tokens).index(eos)]
    return tokenizer.decode(list(tokens), skip_special_tokens=True).strip()


def assert_same_samples(ours: Sequence[str], reference: Sequence[str],
                        traces: Sequence[Sequence[tuple[int, float]]], tokenizer: Any,
                        *, labels: Sequence[object] | None = None, most_apart: float = 0.1) -> list[int]:
    """Every text of *ours* is the sample *reference* traced, or parts from it at a near-tie;
    returns the rows that parted. Near-ties are rare: more than *most_apart* of the rows
    parting means the margins are not what decides (or the tolerance is wrong)."""
    assert len(ours) == len(reference) == len(traces)
    apart = []
    for row, (mine, theirs, trace) in enumerate(zip(ours, reference, traces, strict=True)):
        if mine == theirs:
            continue
        where = parting(trace, mine, tokenizer)
        label = labels[row] if labels is not None else row
        assert where is not None, (label, "the trace does not decode to the reference text", theirs)
        _assert_near_tie(where, label, mine, theirs)
        apart.append(row)
    return _rare(apart, len(ours), most_apart)


def _assert_near_tie(where: Parting, label: object, mine: str, theirs: str) -> None:
    assert where.near_tie, (f"{label}: {mine!r} and {theirs!r} part at steps {where.steps.start}-"
                            f"{where.steps.stop - 1}, where the pick won by {where.margin:.3g} logits: "
                            f"a real difference, not rounding")


def _rare(apart: list[int], rows: int, most_apart: float) -> list[int]:
    assert len(apart) <= max(1, most_apart * rows), f"{len(apart)} of {rows} samples parted at near-ties"
    return apart


def assert_same_decodes(ours: Sequence[str], our_traces: Sequence[Sequence[tuple[int, float]]],
                        reference: Sequence[str], traces: Sequence[Sequence[tuple[int, float]]],
                        *, most_apart: float = 0.1) -> list[int]:
    """Two traced decodes of the same rows (``generate(..., trace=...)``) are the same
    samples: equal, or parting at a step where both picks were near-ties. Returns the rows
    that parted."""
    assert len(ours) == len(reference) == len(our_traces) == len(traces)
    apart = []
    for row in range(len(ours)):
        where = token_parting(our_traces[row], traces[row])
        if where is None:
            assert ours[row] == reference[row], row
            continue
        _assert_near_tie(where, f"row {row}", ours[row], reference[row])
        apart.append(row)
    return _rare(apart, len(ours), most_apart)
