"""The ``unseen_scenes`` check: Hypothesis draws scenes no training data contains.

Each drawn scene is given to the adapter as text (its core: a hypertoken it was never
trained on would mean nothing), and its samples must hold that scene against the
training scenes and speak the adapter's register. A scene whose samples confidently miss
the threshold (the upper bound of their interval is below it: the rule every verdict
uses, applied to one scene) is a failing example: Hypothesis shrinks it to a minimal
failing scene, which the verdict prints, and its example database replays it first on
the next run. A scene that merely comes out below the bar in a few samples is not a
counterexample; it counts in the pooled verdict over every scene tried.

The scenes the scenes file marks ``split: unseen`` are tried first, as explicit examples.
Draws are seeded by ``--scenelora-seed`` alone, with or without CI, so a warm re-run is
served from the cache and a CI machine draws the scenes a developer's run drew. Under CI
(``CI`` set) no example database is kept: nothing is replayed there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fsutil import cache_home
from ..prompts import InputMode
from ..scenes import Scene, Split
from ..scoring.verdict import Sample, Status, Verdict, decide
from .context import Request
from .kind import CheckKind, Param
from .registers import REGISTER_PARAM, register_holds
from .scene import scene_margins

if TYPE_CHECKING:
    from ..specs import CheckSpec
    from .context import CheckContext


@dataclass
class _Trial:
    scene: Scene
    rate: float
    verdict: Verdict
    texts: list[str]


@dataclass
class _Log:
    trials: list[_Trial] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # cores of the scenes that failed
    shrink_trials: int = 0  # new scenes tried after the first failure


#: How many new scenes shrinking may try after the first failure. Each costs a batch of
#: generations; five fields of eight words shrink to their first words well within it.
SHRINK_BUDGET = 24


class SceneFailed(AssertionError):
    """One drawn scene missed the threshold: what Hypothesis shrinks and replays."""

    def __init__(self, message: str, trial: _Trial) -> None:
        super().__init__(message)
        self.trial = trial


if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:  # Hypothesis depends on the backport there
    from exceptiongroup import BaseExceptionGroup


def _first(group: BaseExceptionGroup) -> SceneFailed:
    leaf = group.exceptions[0]
    return _first(leaf) if isinstance(leaf, BaseExceptionGroup) else leaf


def distinct_trials(trials: Sequence[_Trial]) -> list[_Trial]:
    """Each scene's first trial, in the order they were tried: what the verdict pools.
    Shrinking re-runs scenes (with the same cached samples), which must count once."""
    first: dict[str, _Trial] = {}
    for t in trials:
        first.setdefault(t.scene.core, t)
    return list(first.values())


def describe_scene(scene: Scene) -> str:
    fields = ", ".join(f"{k}={v!r}" for k, v in scene.fields.items())
    return f"{scene.core!r} ({fields})" if fields else repr(scene.core)


def _holds_a_failure(database: Any, trial: Any) -> bool:
    """Whether Hypothesis's example *database* keeps a failing example of *trial* (under
    the key it files them by) that the next run replays first."""
    if database is None:
        return False
    try:
        from hypothesis.internal.reflection import function_digest
    except ImportError:  # pragma: no cover - a Hypothesis that moved it: assume one is kept
        return True
    return any(True for _ in database.fetch(function_digest(trial)))


def run(context: CheckContext, spec: CheckSpec, adapter: str) -> Verdict:
    from hypothesis import example, given, reject, settings

    from ..strategies import scenes

    world = context.world
    register = context.register(spec, adapter)
    space = context.register_space()
    training = world.scenes.split(Split.TRAIN)
    distractor_vecs = context.embed([s.core for s in training])
    threshold = spec["threshold"]
    log = _Log()
    drawn: list[Scene] | None = None  # while the draws are being listed ahead of the run
    ahead = _Ahead(context, adapter, spec["samples"])

    def trial(scene: Scene) -> None:
        if drawn is not None:
            drawn.append(scene)
            return
        if log.failed and scene.core not in log.failed:
            if log.shrink_trials >= SHRINK_BUDGET:
                reject()  # shrinking keeps the smallest failure found so far
            log.shrink_trials += 1
        ahead.generate(scene)
        prompt = context.scene_prompt(scene, InputMode.FRAGMENT)
        [outputs] = context.texts([Request(adapter, prompt, spec["samples"])])
        vecs = context.embed(outputs)
        others = [i for i, s in enumerate(training) if s.core != scene.core]
        margins = scene_margins(vecs, context.embed_one(scene.core), distractor_vecs[others])
        verdict = register_holds(vecs, register, space, margins, threshold=threshold, seed=context.seed,
                                 subject=adapter, texts=outputs, check="unseen_scenes", by="rate",
                                 contexts=[{"scene": scene.core}] * len(outputs))
        rate = float(np.mean(verdict.samples))
        log.trials.append(_Trial(scene, rate, verdict, outputs))
        if verdict.status is Status.FAIL:
            log.failed.add(scene.core)
            raise SceneFailed(f"scene {describe_scene(scene)}: {rate:.2f} of samples held it "
                              f"in the {register} register (95% CI {verdict.ci_low:.2f}.."
                              f"{verdict.ci_high:.2f}), needs {threshold:.2f}", log.trials[-1])

    options = _hypothesis_options(spec["examples"])
    # one database key per suite, check and adapter identity, so failures replay where they belong
    identity = f"{context.suite.path}::{spec.name}::{context.adapter(adapter).content_hash}"
    trial._hypothesis_internal_add_digest = identity.encode()

    def wrapped(examples: Sequence[Scene] = (), **overrides: Any) -> Any:
        test = given(scenes(world.scenes))(trial)
        for scene in reversed(examples):
            test = example(scene)(test)
        test = settings(**{**options, **overrides})(test)
        # Seeded draws that keep the example database: ``@hypothesis.seed`` would turn the
        # database off, and with it the replay of the last failure. (Hypothesis's own
        # ``derandomize`` seeds from a digest of this function's source: every edit of it
        # would change the scenes drawn under CI.)
        test._hypothesis_internal_use_seed = context.seed
        return test

    listed = world.scenes.split(Split.UNSEEN)
    # The scenes Hypothesis will draw, listed first by the same seeded engine with nothing
    # to fail (and no database to touch), so that scenes are generated a batch at a time
    # (eight scenes of eight samples) rather than one scene's eight rows at a time, which
    # costs several times more per row. Generation runs at most one batch ahead of the
    # run: a failure stops the draws, and what was generated past it is wasted. A stored failure
    # is replayed before any draw (and then shrunk): that run's scenes are not known ahead,
    # so only the listed ones are. Scenes the run adds on its own way (shrinking) are
    # generated as it reaches them.
    drawn = []
    if not _holds_a_failure(options["database"], trial):
        wrapped(database=None)()
    ahead.expect(listed + drawn)
    drawn = None
    failure = _first_failure(wrapped(listed))
    return _pooled_verdict(context, adapter, register, threshold, log.trials, failure)


class _Ahead:
    """Scenes known to come whose samples are not generated yet: a scene's samples are
    generated with those of the next few, in one batch."""

    def __init__(self, context: CheckContext, adapter: str, samples: int) -> None:
        self.context, self.adapter, self.samples = context, adapter, samples
        self.scenes: dict[str, Scene] = {}

    def expect(self, scenes: Sequence[Scene]) -> None:
        self.scenes.update((s.core, s) for s in scenes)

    def generate(self, scene: Scene) -> None:
        if scene.core not in self.scenes:
            return
        cores = list(self.scenes)
        start = cores.index(scene.core)
        per_batch = max(1, self.context.batch_rows // self.samples)
        window = [self.scenes.pop(core) for core in cores[start : start + per_batch]]
        prompts = [self.context.scene_prompt(s, InputMode.FRAGMENT) for s in window]
        outputs = self.context.texts([Request(self.adapter, prompt, self.samples) for prompt in prompts])
        self.context.embed([s.core for s in window] + [text for batch in outputs for text in batch])


def _hypothesis_options(examples: int) -> dict[str, Any]:
    from hypothesis import HealthCheck
    from hypothesis.database import DirectoryBasedExampleDatabase

    return {
        "max_examples": examples,
        "deadline": None,
        "suppress_health_check": list(HealthCheck),
        "print_blob": False,
        "database": None if os.environ.get("CI") else DirectoryBasedExampleDatabase(
            str(cache_home() / "hypothesis")),
    }


def _first_failure(test: Any) -> SceneFailed | None:
    """Run the property; the failing scene Hypothesis reports (shrunk), if any."""
    try:
        test()
    except SceneFailed as exc:
        return exc
    except BaseExceptionGroup as group:  # several listed scenes failed: report the first
        failed, other = group.split(SceneFailed)
        if failed is None or other is not None:
            raise
        return _first(failed)
    return None


def _pooled_verdict(context: CheckContext, adapter: str, register: str, threshold: float,
                    trials: Sequence[_Trial], failure: SceneFailed | None) -> Verdict:
    """Every distinct scene's samples pooled into one verdict; a scene that failed on its own
    fails the check even when the pooled rate clears the bar."""
    samples: list[float] = []
    texts: list[str] = []
    contexts: list[dict[str, Any]] = []
    distinct = distinct_trials(trials)
    for t in distinct:
        samples.extend(t.verdict.samples)
        texts.extend(t.texts)
        contexts.extend([{"scene": t.scene.core}] * len(t.verdict.samples))
    detail = {
        "register": register,
        "scenes_tried": len(distinct),
        "per_scene": [{"scene": t.scene.core, "rate": round(t.rate, 3)} for t in distinct],
    }
    worst = None
    if failure is not None:
        minimal = failure.trial  # the one Hypothesis reports: shrunk, or a listed scene
        detail["minimal_failing_scene"] = {"core": minimal.scene.core, **minimal.scene.fields,
                                           "rate": round(minimal.rate, 3)}
        detail["reason"] = f"minimal failing scene: {failure}"
        worst = minimal.verdict.worst or Sample(index=0, score=minimal.rate, text="",
                                                context={"scene": minimal.scene.core})
    verdict = decide("unseen_scenes", adapter, samples, threshold, seed=context.seed, rate=True,
                     texts=texts, contexts=contexts, detail=detail, worst=worst,
                     clusters=[c["scene"] for c in contexts])
    if failure is not None and verdict.status is not Status.FAIL:
        # one scene confidently misses the bar, whatever the pooled interval says: a scene
        # the voice does not hold is a counterexample to "holds on unseen scenes"
        from dataclasses import replace

        verdict = replace(verdict, status=Status.FAIL, samples_needed=None)
    return verdict


KIND = CheckKind(
    name="unseen_scenes",
    params={
        "threshold": Param(float, 0.5, 0.0, 1.0, "share of samples on the scene AND in the register"),
        "samples": Param(int, 6, 2, 256, "samples per drawn scene"),
        "examples": Param(int, 5, 1, 200, "Hypothesis examples (scenes drawn)"),
        "register": REGISTER_PARAM,
    },
    tolerance=0.05,  # success rate
    run=run,
    help="scenes no training data contains, drawn by Hypothesis, hold in the adapter's register",
    grows="examples",  # an undecided pooled verdict draws more scenes, not more of each
)
