"""``decision_margin``: how far a decode step's pick is from another pick.

Comparisons of samples across batching and machines (``near_ties.py``) excuse a parting
text only at a step whose margin is below the logit tolerance, so the margin must be a true
lower bound: no perturbation of the logits smaller than it changes the pick. Checked here
with the perturbations that come closest (the winner down and a rival up, the nucleus
shrunk or grown) on flat and peaked distributions, greedy and sampled.
"""

from __future__ import annotations

import pytest

from pytest_scenelora.engine.generation import GenerationConfig
from pytest_scenelora.engine.sampling import decision_margin, sample_row

CONFIGS = {
    "greedy": GenerationConfig(),
    "full": GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0),
    "suites": GenerationConfig(do_sample=True, temperature=0.8, top_p=0.95),
    "narrow": GenerationConfig(do_sample=True, temperature=0.5, top_p=0.5),
}


def _pick(logits, config: GenerationConfig, state) -> int:
    import torch

    if not config.do_sample:
        return int(logits.argmax())
    generator = torch.Generator()
    generator.set_state(state)
    return sample_row(logits, config, generator)


def _closest_perturbations(logits, config: GenerationConfig, winner: int):
    """Unit max-norm perturbations aimed at changing the pick."""
    import torch

    probs = torch.softmax(logits / config.temperature, -1)
    ranked, order = torch.sort(probs, descending=True)
    inside = torch.zeros_like(probs, dtype=torch.bool)
    inside[order[: int(((ranked.cumsum(-1) - ranked) < config.top_p).sum())]] = True
    for rival in torch.topk(probs, 12).indices.tolist():
        if rival != winner:
            push = torch.zeros_like(logits)
            push[winner], push[rival] = -1.0, 1.0
            yield push
            lift = -torch.ones_like(logits)
            lift[rival] = 1.0
            yield lift
    yield torch.where(inside, -1.0, 1.0)  # the nucleus' mass down: tokens outside join
    grow = torch.where(inside, 1.0, -1.0)
    grow[winner] = -1.0
    yield grow  # the others up: the winner may fall outside


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_perturbation_below_the_margin_changes_the_pick(name: str) -> None:
    import torch

    config = CONFIGS[name]
    torch.manual_seed(7)
    flipped_just_above = 0
    for trial in range(24):
        logits = torch.randn(512) * (0.3 + trial % 6)  # flat to peaked
        state = torch.Generator().manual_seed(trial).get_state()
        token, margin = decision_margin(logits, config, state)
        assert token == _pick(logits, config, state)
        assert margin > 0
        if margin < 1e-4:  # within the sampler's own float32 rounding: a tie for any purpose
            continue
        for push in _closest_perturbations(logits, config, token):
            assert _pick(logits + push * margin * 0.999, config, state) == token, (trial, margin)
        flipped_just_above += any(_pick(logits + push * margin * 1.5, config, state) != token
                                  for push in _closest_perturbations(logits, config, token))
    # a bound that is never close to tight would excuse real differences
    assert flipped_just_above >= 2


def test_an_exact_tie_has_no_margin_and_a_clear_winner_a_wide_one() -> None:
    import torch

    greedy = CONFIGS["greedy"]
    tie = torch.tensor([1.0, 3.0, 3.0, -2.0])
    assert decision_margin(tie, greedy)[1] == 0.0
    assert decision_margin(torch.tensor([1.0, 9.0, 3.0, -2.0]), greedy) == (1, 3.0)
    state = torch.Generator().manual_seed(0).get_state()
    peaked = torch.full((64,), -20.0)
    peaked[5] = 20.0
    token, margin = decision_margin(peaked, CONFIGS["suites"], state)
    assert token == 5 and margin > 1.0
