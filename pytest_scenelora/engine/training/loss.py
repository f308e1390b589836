"""The training loss, with the LM head projected only where there is a label.

A causal LM's forward projects every position onto the vocabulary, and the loss then
ignores the positions labelled -100: here the prompt (the chat template's system text on
an instruction-tuned base) and the right padding. On a 49k-token vocabulary that head is
a large share of a step. The head's input is cut to the positions whose next token is
labelled before the head runs, through a pre-hook on the model's own output module, so
every architecture keeps its own forward (scaling, soft-capping, a PEFT-wrapped head) and
the loss is the same mean over the same tokens as ``model(**batch).loss``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

from ..generation import takes_logits_to_keep

#: models whose logits did not come from their output module row by row: the whole forward
_NOT_SEPARABLE: weakref.WeakSet[Any] = weakref.WeakSet()


def head_is_separable(model: Any) -> bool:
    """True where the model has an output module and a forward that takes
    ``logits_to_keep`` (transformers' causal LMs): the sign that its logits come straight
    from that module, position by position. Other models get the full forward's loss."""
    if model in _NOT_SEPARABLE:
        return False
    return takes_logits_to_keep(model) and model.get_output_embeddings() is not None


@contextlib.contextmanager
def _head_sees_only(head: Any, keep: Any) -> Iterator[None]:
    def select(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][keep], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def causal_lm_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The mean next-token cross-entropy over *batch*'s labelled tokens (labels as for
    ``model(**batch)``: unshifted, -100 where there is no loss)."""
    import torch.nn.functional as F

    if not head_is_separable(model):
        return model(**batch).loss
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    labelled = targets != -100
    keep = F.pad(labelled, (0, 1), value=False)  # the last position predicts nothing
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with _head_sees_only(model.get_output_embeddings(), keep):
        logits = model(**inputs).logits
    if logits.dim() != 2 or logits.shape[0] != int(labelled.sum()):
        # an architecture that reshapes its logits after the head, or projects without
        # calling it: the whole forward, for this step and every later one
        _NOT_SEPARABLE.add(model)
        return model(**batch).loss
    return F.cross_entropy(logits.float(), targets[labelled])
