"""Picking the next token of each row: greedy or seeded top-p sampling, and how close a
pick was to going another way.

Each row samples with its own ``torch.Generator``, so a row's tokens depend only on its
logits and seed, never on the other rows of its batch. The sampler is the exponential
race (``argmax(p / q)``, ``q`` exponential noise), which picks exactly as multinomial
sampling from ``p`` does; where the nucleus is short, only its candidates are raced and
each generator is moved past the rest of the noise (:func:`skipping_is_exact`).
:func:`decision_margin` bounds the logit change that could change a pick: tests compare
samples across batching and machines with it rather than by equality.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Sampler(Protocol):
    """What picking a token needs of a generation config (:class:`~.generation.GenerationConfig`)."""

    do_sample: bool
    temperature: float
    top_p: float


def sample_row(logits: Any, config: Sampler, generator: Any) -> int:
    """The reference sampler for one row: what :func:`sample_rows` computes, row by row.

    Kept as the definition of a sample (tests compare the batched sampler with it).
    """
    import torch

    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < config.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def decision_margin(logits: Any, config: Sampler, generator_state: Any = None) -> tuple[int, float]:
    """The token one decode step picks from *logits*, and how far it is from picking another.

    The margin is a lower bound on the perturbation (largest change of any one logit) that
    could change the pick. Batched and one-row forwards, or two CPUs with other vector
    units, give logits that differ by rounding (~1e-6); a sample can only differ between
    them at a step whose margin is below that difference. Comparisons of texts across
    batching or machines use this to tell a near-tie from a real difference.

    Greedy: half the gap between the two largest logits. Sampled (*generator_state*: the
    row's generator state before the draw, which is replayed, not consumed): the draw is
    ``argmax(p_i / q_i)`` over the nucleus with exponential noise ``q`` in rank order (see
    :func:`sample_rows`). A perturbation of size d moves the log ratio of any two
    probabilities, and the log-odds of any partial sum of them, by at most ``2d / T``, so
    it can change the pick only by closing the race between the winner and another
    candidate, by swapping two adjacent ranks (their noise swaps with them) where that
    changes the winner, or by moving the top-p boundary across tokens that would then win,
    or across the winner itself. ``tests/test_decision_margin.py`` checks the bound against
    the perturbations that come closest. Below ~1e-4 the sampler's own float32 sums blur
    it: such a step is a tie for any purpose.
    """
    import torch

    logits = logits.float()
    if not config.do_sample:
        top = torch.topk(logits, 2).values.tolist()
        return int(logits.argmax()), (top[0] - top[1]) / 2
    t = config.temperature
    logp = torch.log_softmax(logits / t, dim=-1).double()
    probs = logp.exp()
    generator = torch.Generator()
    if generator_state is not None:
        generator.set_state(generator_state)
    if config.top_p < 1.0:
        ranked_logp, order = torch.sort(logp, descending=True)
        ranked = ranked_logp.exp()
        before = ranked.cumsum(-1) - ranked  # mass ahead of each rank
        kept = int((before < config.top_p).sum())
    else:
        order = torch.arange(logp.numel())
        ranked_logp, ranked, kept = logp, probs, logp.numel()
        before = None
    noise = torch.empty(logp.numel(), dtype=torch.float32).exponential_(1, generator=generator).double()
    keys = ranked_logp - noise.log()  # log of p / q, in rank order
    winner = int(keys[:kept].argmax())
    race = _Race(keys=keys, kept=kept, winner=winner, scale=t / 2, temperature=t, top_p=config.top_p,
                 before=before, ranked_logp=ranked_logp, noise=noise)
    margins = [race.gap(race.won, race.rival(winner))]
    if config.top_p < 1.0:
        margins += _nucleus_margins(race, least=margins[0])
    return int(order[winner]), min(margins, default=math.inf)


@dataclass
class _Race:
    """One sampled pick as :func:`decision_margin` replays it: the log keys ``log(p / q)`` in
    rank order, the nucleus' first *kept* ranks, and the *winner*'s rank."""

    keys: Any
    kept: int
    winner: int
    scale: float  # the logit change that closes a gap of 1 between two log keys (T / 2)
    temperature: float
    top_p: float
    before: Any  # the mass ahead of each rank (None without top-p)
    ranked_logp: Any
    noise: Any

    def __post_init__(self) -> None:
        import torch

        # the likeliest few keys of the nucleus: enough to find the best rival of the winner
        # with any two other ranks left out
        values, indices = torch.topk(self.keys[: self.kept], min(4, self.kept))
        self.top = list(zip(indices.tolist(), values.tolist(), strict=True))
        self.won = float(self.keys[self.winner])

    def rival(self, *left_out: int) -> float:
        return next((value for rank, value in self.top if rank not in left_out), -math.inf)

    def gap(self, winning: float, rivals: float) -> float:
        return max(0.0, (winning - rivals) * self.scale)


def _nucleus_margins(race: _Race, least: float) -> list[float]:
    """The top-p ways a pick can change: tokens joining the nucleus and winning, the winner
    falling out of it, adjacent ranks trading places (and noise) where that changes the
    winner. *least* is the smallest margin found so far: a pair of ranks further apart than
    that cannot lower it."""
    import torch

    keys, kept, winner, won, scale = race.keys, race.kept, race.winner, race.won, race.scale
    margins: list[float] = []
    # the logit change that moves the mass ahead of each rank across top_p: it moves
    # that mass's log-odds by at most 2 / T per unit
    odds = lambda p: p.log() - (1 - p).log()  # noqa: E731
    top_p = torch.tensor(race.top_p, dtype=torch.float64)
    boundary = (odds(race.before.clamp(1e-300, 1 - 1e-16)) - odds(top_p)).abs() * (race.temperature / 2)
    if kept < keys.numel():  # tokens outside join the nucleus, and one of them wins
        joining = torch.maximum(boundary[kept:], (won - keys[kept:]).clamp(min=0) * scale)
        margins.append(float(joining.min()))
    if winner > 0:  # the winner falls outside it
        margins.append(float(boundary[winner]))
    # adjacent ranks r and r + 1 trade places, and noise, when their probabilities cross
    # (at the nucleus' edge the outer token comes in and the inner one leaves)
    ranked_logp = race.ranked_logp
    gaps = ((ranked_logp[:-1] - ranked_logp[1:])[:kept] * scale).tolist()
    log_noise = race.noise.log().tolist()
    least = min([least, *margins])
    for r in (i for i, g in enumerate(gaps) if g < least):
        swapped = {r + 1: float(ranked_logp[r + 1]) - log_noise[r]}
        if r + 1 < kept:
            swapped[r] = float(ranked_logp[r]) - log_noise[r + 1]
        rest = race.rival(r, r + 1, winner)
        if winner in (r, r + 1):  # the winner's own noise changes, or it leaves
            mine = swapped.get(winner)
            need = 0.0 if mine is None else race.gap(mine, max(rest, *(v for k, v in swapped.items()
                                                                       if k != winner)))
        else:
            need = race.gap(won, max(rest, *swapped.values()))
        margins.append(max(gaps[r], need))
    return margins



def sample_rows(logits: Any, config: Sampler, generators: Sequence[Any]) -> Any:
    """One token per row, each row drawn from its own generator; equal to
    ``[sample_row(logits[i], config, generators[i]) for i in rows]``, batched.

    torch draws one multinomial sample as ``argmax(p / q)`` with ``q`` exponential(1)
    noise from the generator (the "exponential race", aten's fast path for one sample).
    Drawing ``q`` per row from the row's generator and doing the rest batched gives the
    same tokens as the per-row loop without a multinomial call per row and step. The
    descending sort for top-p is numpy's introsort (a third of ``torch.sort``'s time
    here): sorted *values* are the same whatever the algorithm, so the nucleus, the
    renormalised probabilities and the draw are too; only tied values may come out in
    another order, so a row whose drawn value has an equal neighbour is looked up in
    ``torch.sort``'s order instead. (Together these were 60% of a 64-row decode on one
    core.) ``tests/test_generation_speed.py`` holds the two samplers equal, ties included.
    """
    import torch

    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p >= 1.0:
        return _race(probs, generators)[:, 0]
    tokens = torch.empty(probs.shape[0], dtype=torch.long)
    for rows, ranked, order in rankings(probs, config.top_p):
        if len(rows) == len(tokens):  # one group: no copies
            return _draw_from_nucleus(probs, ranked, order, config.top_p, generators)
        tokens[rows] = _draw_from_nucleus(probs[rows], ranked, order, config.top_p,
                                          [generators[i] for i in rows])
    return tokens


def _draw_from_nucleus(probs: Any, ranked: Any, order: Any, top_p: float, generators: Sequence[Any]) -> Any:
    """One token per row of *probs* from its top-p nucleus, given the rows' descending
    probabilities *ranked* (all of them, or a prefix that holds the nucleus) and their
    token ids *order*."""
    import torch

    keep = ranked.cumsum(-1) - ranked < top_p
    nucleus = ranked * keep  # the rest of the ranking, when it was cut, is outside the nucleus
    choice = _race(nucleus / nucleus.sum(-1, keepdim=True), generators, columns=probs.shape[-1])
    tokens = order.gather(-1, choice)[:, 0]
    # ties: the drawn rank holds a value equal to a neighbour's; take torch.sort's order there
    last = ranked.shape[-1] - 1
    drawn = ranked.gather(-1, choice)
    tied = (((ranked.gather(-1, (choice - 1).clamp(min=0)) == drawn) & (choice > 0))
            | ((ranked.gather(-1, (choice + 1).clamp(max=last)) == drawn) & (choice < last)))
    for row in tied[:, 0].nonzero()[:, 0].tolist():
        tokens[row] = torch.sort(probs[row], descending=True)[1][int(choice[row, 0])]
    return tokens


#: How many of the likeliest tokens the nucleus is first looked for in. Ranking only those
#: (``torch.topk``) costs a fraction of sorting the whole vocabulary, and at the suites'
#: temperatures most rows' nucleus ends inside them.
NUCLEUS_CANDIDATES = 64


def rankings(probs: Any, top_p: float) -> Iterator[tuple[list[int], Any, Any]]:
    """The rows' probabilities in descending order and their token ids, as groups of
    ``(rows, ranked, order)``: the rows whose nucleus ends inside the likeliest
    :data:`NUCLEUS_CANDIDATES` + 1 tokens get only those, the others their full ranking.

    A prefix of the ranking is all top-p needs: the nucleus is a prefix, its cumulative
    sums are the same prefix sums, so the draw from it is the one from the full ranking.
    """
    import torch

    everything = list(range(probs.shape[0]))
    width = NUCLEUS_CANDIDATES + 1
    if width >= probs.shape[-1]:
        yield everything, *_full_ranking(probs)
        return
    ranked, order = torch.topk(probs, width, dim=-1)
    # the mass ahead of the 64th likeliest token, computed as the draw does: when it
    # reaches top_p, that token and every later one are outside the nucleus
    inside = (ranked[:, :-1].cumsum(-1)[:, -1] - ranked[:, -2]) >= top_p
    if bool(inside.all()):
        yield everything, ranked, order
        return
    short, wide = inside.nonzero()[:, 0].tolist(), (~inside).nonzero()[:, 0].tolist()
    if short:
        yield short, ranked[short], order[short]
    yield wide, *_full_ranking(probs[wide])


def _full_ranking(probs: Any) -> tuple[Any, Any]:
    """Every probability of each row in descending order, and the token ids (numpy's sort:
    the values come out as ``torch.sort``'s; ties are settled in :func:`_draw_from_nucleus`)."""
    import torch

    order = torch.from_numpy((-probs).numpy().argsort(axis=-1, kind="quicksort"))
    return probs.gather(-1, order), order


def _race(probs: Any, generators: Sequence[Any], *, columns: int | None = None) -> Any:
    """``torch.multinomial(probs[i], 1, generator=generators[i])`` for every row, as one
    argmax over ``probs / q`` with each row's exponential noise ``q`` from its generator.

    *probs* may hold only the first of *columns* columns, the rest being zeros (a nucleus
    cut from a ranking): zeros never win the race, so their noise is not drawn; each
    generator is only moved past it, by as many 64-bit draws, which is 4-5x cheaper than
    the exponentials (see :func:`skipping_is_exact`). The tokens are the same.
    """
    import torch

    rest = (columns or probs.shape[-1]) - probs.shape[-1]
    if rest and not skipping_is_exact():
        probs, rest = torch.nn.functional.pad(probs, (0, rest)), 0
    noise = torch.empty_like(probs)
    skipped = torch.empty(rest, dtype=torch.int64)
    for row, generator in enumerate(generators):
        noise[row].exponential_(1, generator=generator)
        if rest:
            skipped.random_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)


@functools.cache
def skipping_is_exact() -> bool:
    """Whether drawing k exponentials, then n - k int64 random numbers, leaves a CPU
    generator where drawing n exponentials does, the k values being the first k of the n.

    True of torch's CPU kernels (each float exponential takes one 64-bit draw from the
    Mersenne twister, as an int64 ``random_`` does), but no API promises it: checked once
    per process, on the suites' shape; where it does not hold, the noise is drawn whole.
    """
    import torch

    whole, split = torch.Generator().manual_seed(20261129), torch.Generator().manual_seed(20261129)
    full = torch.empty(4096).exponential_(1, generator=whole)
    head = torch.empty(NUCLEUS_CANDIDATES + 1).exponential_(1, generator=split)
    torch.empty(4096 - head.numel(), dtype=torch.int64).random_(generator=split)
    return torch.equal(full[: head.numel()], head) and torch.equal(whole.get_state(), split.get_state())
