"""What a check kind may ask of the run: the :class:`CheckContext` the runner hands it.

A kind gathers its material here (samples through the runner's cached, batched
generation; vectors through the suite's scorer; logits kept in the cache; the suite's
world of scenes, topics and registers) and hands it to a pure judgement. The context is
the whole interface between a kind and the runner: a kind imports nothing else of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..prompts import InputMode, scene_prompt, topic_prompt

if TYPE_CHECKING:
    from ..engine.generation import GenerationConfig
    from ..engine.library import AdapterLibrary
    from ..scenes import Scene, Topic
    from ..specs import CheckSpec, Suite


@dataclass(frozen=True)
class Request:
    """n samples of one prompt, from one adapter (None: the base alone)."""

    adapter: str | None
    prompt: str
    n: int


def scene_request_prompt(scene: Scene, mode: InputMode | None = None) -> str:
    """The prompt that asks for *scene* (as its hypertoken, or its text with FRAGMENT)."""
    return scene_prompt(scene.id, scene.core, mode or scene.input)


def topic_request_prompt(topic: Topic) -> str:
    return topic_prompt(topic.description)


class CheckContext:
    """One suite's view of the run, for a check kind.

    *engine* is the suite runner; only the methods below reach it, so a kind (shipped or
    a user's) depends on this class alone.
    """

    #: Rows a generation batch holds on CPU: how many requests are worth gathering.
    batch_rows: int

    def __init__(self, engine: Any, suite: Suite) -> None:
        self._engine = engine
        self.suite = suite
        self.batch_rows = engine.BATCH_ROWS

    # ------------------------------------------------------------------ the world
    @property
    def world(self) -> Any:
        """The suite's scenes (``world.scenes``), topics and registers (dicts by id)."""
        return self._engine.world(self.suite)

    @property
    def seed(self) -> int:
        """``--scenelora-seed``: what seeds bootstrap intervals and draws."""
        return self._engine.seed

    @property
    def generation_config(self) -> GenerationConfig:
        return self._engine.generation_config(self.suite)

    def adapter(self, name: str) -> Any:
        """An adapter's name, scene, role and content hash (no model loaded for it)."""
        return self._engine.adapter(name)

    def scene(self, spec: CheckSpec, adapter: str) -> Scene:
        """The scene the check is about: its ``scene:`` or the adapter's own."""
        return self._engine.check_scene(self.suite, spec, adapter)

    def register(self, spec: CheckSpec, adapter: str) -> str:
        """The register the check expects: its ``register:`` or the adapter's role."""
        return self._engine.check_register(self.suite, spec, adapter)

    def probes(self, n: int, adapter: str) -> list[str]:
        """Up to *n* probe prompts: every scene (the adapter's own first), then every topic."""
        world = self.world
        own = self.adapter(adapter).scene
        prompts = [scene_request_prompt(s) for s in sorted(world.scenes, key=lambda s: s.id != own)]
        prompts += [topic_request_prompt(t) for t in world.topics.values()]
        return [self.format_prompt(p) for p in prompts[:n]]

    def scene_prompt(self, scene: Scene, mode: InputMode | None = None) -> str:
        """The prompt that asks for *scene*, in the run's prompt format."""
        return self.format_prompt(scene_request_prompt(scene, mode))

    def topic_prompt(self, topic: Topic) -> str:
        """The prompt that asks about *topic*, in the run's prompt format."""
        return self.format_prompt(topic_request_prompt(topic))

    def format_prompt(self, prompt: str) -> str:
        """A plain prompt as the base is given it in the suite's ``prompt_format:`` (else the
        run's ``--prompt-format``): through the base's chat template for chat, unchanged
        for plain."""
        formatter = getattr(getattr(self._engine, "session", None), "formatter", None)
        if not callable(formatter):  # an engine without a session: plain prompts
            return prompt
        return formatter(getattr(self.suite, "prompt_format", None))(prompt)

    # --------------------------------------------------------- samples and vectors
    def texts(self, requests: Sequence[Request]) -> list[list[str]]:
        """The samples of each request: from the cache, or generated in mixed batches."""
        return self._engine.texts(requests, self.generation_config)

    def embed(self, texts: Sequence[str]) -> Any:
        """The suite scorer's vectors of *texts* (rows; cached and deduplicated)."""
        return self._engine.scorer(self.suite).embed(list(texts))

    def embed_one(self, text: str) -> Any:
        return self.embed([text])[0]

    def register_space(self) -> Any:
        """The registers' centroids in the scorer's space (a :class:`~.registers.RegisterSpace`)."""
        return self._engine.register_space(self.suite)

    # --------------------------------------------------------------------- models
    @property
    def quantization(self) -> str:
        """How the run loads the base: ``none``, ``8bit`` or ``4bit`` (no model loaded)."""
        return self._engine.session.settings.quantize.value

    @property
    def library(self) -> AdapterLibrary:
        """The adapter library (loads the base and the adapters on first use)."""
        return self._engine.library

    def logits(self, prompts: Sequence[str], adapters: Sequence[str | None]) -> Any:
        """Next-token logits of each prompt under its adapter (None: the base), as numpy."""
        return self.library.logits(list(prompts), list(adapters)).numpy()

    def cached_logits(self, what: str, adapter: str, probes: Sequence[str], compute: Callable[[], Any],
                      **identity: Any) -> Any:
        """*compute()*'s array, kept in the cache under the base, the adapter's content,
        the probes and *identity*: a warm run loads no model for it."""
        return self._engine.cached_logits(what, adapter, probes, compute, **identity)
