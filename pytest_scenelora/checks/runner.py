"""The suite runner: turns a check of a suite, on one adapter, into a Verdict.

It owns the expensive parts and their cache: generating samples (batched, with one
adapter per row, so a check's adapter rows and base rows share one batch), embedding
them (batched and deduplicated by the scorer), and remembering both in SQLite under
content-hash keys. It knows no check kind: each kind (``checks/``) gathers what it needs
through a :class:`~.checks.context.CheckContext` on this runner and judges it.

A warm run touches no model: adapters are known by their headers and content hashes,
the base by its weights' content hash, and generations, vectors and the logits a kind
keeps with ``cached_logits`` all come from the cache, so the
base, PEFT and the embedder are loaded only when something is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..cache import ResultCache, generation_key
from ..engine.generation import GenerationConfig, rows_per_batch
from ..fsutil import canonical_json, sha256_bytes
from ..scenes import Scene, World, excerpt, load_world
from ..specs import CheckSpec, Scorer, Suite, SuiteError
from .context import CheckContext, Request, scene_request_prompt, topic_request_prompt

if TYPE_CHECKING:
    from ..engine.adapters import AdapterInfo
    from ..engine.bases import LoadedBase
    from ..engine.library import AdapterLibrary
    from ..scoring.verdict import Verdict
    from ..settings import Settings

#: Rows per generation batch on CPU; on CUDA it is chosen from free memory.
BATCH_ROWS = 64


@dataclass(frozen=True)
class AdapterIdentity:
    """What the runner needs to know of an adapter without loading any model."""

    name: str
    scene: str | None
    role: str | None
    content_hash: str


__all__ = ["BATCH_ROWS", "SHARED_CHUNK", "AdapterIdentity", "Request", "SuiteRunner", "World", "embed_shared",
           "scene_request_prompt", "topic_request_prompt"]


class Session(Protocol):
    """What the runner needs of the run (a :class:`~.session.SceneSession`): its settings,
    its adapters' files, and the base and library it loads on first use."""

    settings: Settings
    adapter_paths: list[Path]

    @property
    def base(self) -> LoadedBase: ...

    @property
    def library(self) -> AdapterLibrary: ...

    @property
    def base_loaded(self) -> bool: ...

    @property
    def library_loaded(self) -> bool: ...


class SuiteRunner:
    """Runs a suite's checks on adapters; the engine behind every :class:`CheckContext`."""

    BATCH_ROWS = BATCH_ROWS

    def __init__(self, session: Session, cache: ResultCache | None = None) -> None:
        self.session = session
        self.cache = cache or ResultCache()
        self.generated = 0
        self.reused = 0
        self._worlds: dict[tuple[Path | None, ...], World] = {}
        self._scorers: dict[tuple[str, str | None], Any] = {}
        self._spaces: dict[tuple[int, int], Any] = {}
        #: called as (what, done, total) while generating; the plugin draws it on a terminal
        self.progress: Callable[[str, int, int], None] = lambda what, done, total: None
        self._headers: dict[str, AdapterInfo] | None = None
        self._base_key: str | None = None
        self._base_record: dict[str, Any] | None = None

    @property
    def library(self) -> AdapterLibrary:
        """The adapter library (loads the base and every adapter on first use)."""
        return self.session.library

    @property
    def model_loaded(self) -> bool:
        return self.session.library_loaded

    def adapter(self, name: str) -> AdapterIdentity:
        """An adapter's scene, role and content hash: from the library once it is loaded,
        else from the adapter files' headers (no model needed)."""
        from ..engine import adapters as adapter_files

        if not self.model_loaded:
            if self._headers is None:
                self._headers = {}
                for path in self.session.adapter_paths:
                    info = adapter_files.read_adapter(path)
                    self._headers[info.name] = info
            info = self._headers.get(adapter_files.normalize_name(name))
            if info is not None:
                return AdapterIdentity(info.name, info.scene, info.role, info.content_hash)
        entry = self.library.entry(name)
        return AdapterIdentity(entry.name, entry.scene, entry.role, entry.content_hash)

    def base_record(self) -> dict[str, Any]:
        """What the results document says of the base: name, fingerprint, content hash,
        device, dtype, quantization; from the loaded base, or from its files (no model)."""
        if self._base_record is None:
            from ..engine.bases import fingerprint, pick_device, pick_dtype, resolve_base, weights_hash

            settings = self.session.settings
            if self.session.base_loaded:
                base = self.session.base
                path, device, dtype, fp = base.path, str(base.device), base.dtype, base.fingerprint
            else:
                path = resolve_base(settings.base_model)
                device = str(pick_device(settings.device))
                dtype = str(pick_dtype(device)).removeprefix("torch.")
                fp = fingerprint(path)
            self._base_record = {
                "model": settings.base_model, "name": str(path), "fingerprint": fp,
                "weights_sha256": weights_hash(path), "device": device, "dtype": dtype,
                "quantization": settings.quantize.value,
            }
        return self._base_record

    def base_key(self) -> str:
        """The base's identity in cache keys: its weights' content hash, quantization and dtype."""
        if self._base_key is None:
            record = self.base_record()
            self._base_key = sha256_bytes(record["weights_sha256"], record["quantization"], record["dtype"])
        return self._base_key

    # ----------------------------------------------------------------------- world
    def world(self, suite: Suite) -> World:
        key = (suite.scenes, suite.topics, suite.registers)
        if key not in self._worlds:
            self._worlds[key] = load_world(*key)
        return self._worlds[key]

    def scorer(self, suite: Suite) -> Any:
        from ..scoring.embedders import make_scorer

        embedder = suite.embedder or self.session.settings.embedder
        key = (suite.scorer.value, embedder if suite.scorer is Scorer.EMBEDDING else None)
        if key not in self._scorers:
            scorer = make_scorer(suite.scorer.value, embedder, cache=self.cache)
            scorer.progress = lambda what, done, total: self.progress(what, done, total)
            self._scorers[key] = scorer
        return self._scorers[key]

    def register_space(self, suite: Suite) -> Any:
        from .registers import register_centroids

        world, scorer = self.world(suite), self.scorer(suite)
        key = (id(world), id(scorer))
        if key not in self._spaces:
            embed_shared(scorer, [text for reg in world.registers.values() for text in reg.texts])
            self._spaces[key] = register_centroids(
                {name: scorer.embed(reg.texts) for name, reg in world.registers.items()}
            )
        return self._spaces[key]

    # ------------------------------------------------------------------ generation
    @staticmethod
    def generation_config(suite: Suite) -> GenerationConfig:
        g = suite.generation
        return GenerationConfig(max_new_tokens=g.max_new_tokens, do_sample=True,
                                temperature=g.temperature, top_p=g.top_p)

    def sample_seed(self, prompt: str, index: int) -> int:
        digest = sha256_bytes(str(self.session.settings.seed), prompt, str(index))
        return int(digest[:8], 16)

    def texts(self, requests: Sequence[Request], config: GenerationConfig) -> list[list[str]]:
        """The samples of each request, from the cache or generated in mixed batches."""
        base_key = self.base_key()
        rows: list[tuple[str, str | None, str, int]] = []  # (cache key, adapter, prompt, index)
        for req in requests:
            adapter_hash = self.adapter(req.adapter).content_hash if req.adapter else "__base__"
            for i in range(req.n):
                key = generation_key(base=base_key, adapter=adapter_hash, prompt=req.prompt,
                                     config=config.key(), seed=self.sample_seed(req.prompt, i), index=i)
                rows.append((key, req.adapter, req.prompt, i))
        found = self.cache.get_generations([r[0] for r in rows])
        missing = list({r[0]: r for r in rows if r[0] not in found}.values())
        self.reused += len(rows) - len(missing)
        names = ", ".join(dict.fromkeys(r[1] or "base" for r in missing))
        what = f"generating {len(missing)} samples ({names})"
        try:
            batch = self.batch_rows(requests, config) if missing else BATCH_ROWS
            for start in range(0, len(missing), batch):
                self.progress(what, start, len(missing))
                chunk = missing[start : start + batch]
                outputs = self.library.generate(
                    [r[2] for r in chunk], [r[1] for r in chunk], config=config,
                    seeds=[self.sample_seed(r[2], r[3]) for r in chunk],
                )
                fresh = {r[0]: text for r, text in zip(chunk, outputs, strict=True)}
                self.cache.put_generations(fresh)
                found.update(fresh)
                self.generated += len(chunk)
        finally:
            if missing:  # done (or failed): the bar goes away
                self.progress(what, len(missing), len(missing))
        out: list[list[str]] = []
        position = 0
        for req in requests:
            out.append([found[rows[position + i][0]] for i in range(req.n)])
            position += req.n
        return out

    def batch_rows(self, requests: Sequence[Request], config: GenerationConfig) -> int:
        """Rows per batch: :data:`BATCH_ROWS` on CPU, what free memory holds on CUDA."""
        base = self.library.base
        if base.device != "cuda":
            return BATCH_ROWS
        longest = max(len(base.tokenizer(r.prompt)["input_ids"]) for r in requests)
        return rows_per_batch(base.model, longest + config.max_new_tokens)

    def cached_logits(self, what: str, adapter: str, probes: Sequence[str], compute: Any,
                      **identity: Any) -> Any:
        """Logits computed by *compute()*, kept in the cache under the base, the adapter's
        content, the probes and *identity*: a warm run loads no model for them."""
        key = sha256_bytes(canonical_json({
            "what": what, "base": self.base_key(), "adapter": self.adapter(adapter).content_hash,
            "probes": list(probes), **identity,
        }))
        found = self.cache.get_array(key)
        if found is None:
            found = compute()
            self.cache.put_array(key, found)
        return found

    # ---------------------------------------------------------------------- checks
    def run(self, suite: Suite, spec: CheckSpec, adapter: str) -> Verdict:
        """Run the check's kind (its ``definition``, set when the suite was loaded) with a
        :class:`CheckContext` on this runner: what it generates and embeds is cached here."""
        definition = spec.definition
        if definition is None:  # a spec built by hand: the shipped kind of that name
            from .registry import by_name, shipped_kinds

            definition = by_name(shipped_kinds()).get(spec.kind)
            if definition is None:
                raise SuiteError(suite.path, spec.line, f"unknown check kind {excerpt(spec.kind)}")
        context = CheckContext(self, suite)
        verdict = definition.run(context, spec, adapter)
        if self.session.settings.sequential:
            verdict = self.continue_sampling(definition, context, spec, adapter, verdict)
        return verdict

    def continue_sampling(self, definition: Any, context: CheckContext, spec: CheckSpec, adapter: str,
                          verdict: Verdict) -> Verdict:
        """Sequential sampling: a check left inconclusive by its ``samples`` runs again with
        ``samples`` more each time (or, for a kind that grows another parameter, such as
        ``unseen_scenes``' ``examples``, that one), up to ``max_samples``, until it is decided.

        Each later look judges all the samples so far with the check's own interval at a
        stricter confidence (:func:`~.scoring.sequential.spending_confidence`), so looking
        again and again keeps the verdict's error within its stated level. Generations are
        cached by prompt and sample index, so each look generates only the new samples, and
        a warm rerun replays every look from the cache. The verdict says how many samples it
        used and why it stopped (``detail["sequential"]``).
        """
        from ..scoring.sequential import looks, spending_confidence
        from ..scoring.verdict import REJUDGEABLE, Status, rejudge
        from .kind import SEQUENTIAL_FACTOR

        grows = getattr(definition, "grows", "samples")
        first, per = spec.params.get(grows), spec.params.get("samples")
        if not isinstance(first, int) or not isinstance(per, int) \
                or verdict.detail.get("interval") not in REJUDGEABLE:
            return verdict
        unit = 1 if grows == "samples" else per  # the samples one more of *grows* adds
        max_samples = spec.params.get("max_samples")
        budget = max_samples // unit if max_samples else SEQUENTIAL_FACTOR * first
        stated = verdict.confidence

        def summary(n: int, last: int, looks_taken: int, stop: str, each: float) -> dict[str, Any]:
            held = {"samples": n if grows == "samples" else per, "first": first,
                    "max_samples": last * unit, "looks": looks_taken, "stop": stop,
                    "confidence": stated, "confidence_per_look": each}
            if grows != "samples":
                held.update({"grows": grows, grows: n, f"max_{grows}": last})
            return held

        if budget <= first:
            stop = "decided" if verdict.status is not Status.INCONCLUSIVE else "budget"
            return replace(verdict, detail={**verdict.detail,
                                            "sequential": summary(first, first, 1, stop, stated)})
        points = looks(first, first, budget)
        each = spending_confidence(stated, len(points))
        first_p = verdict.detail.get("p_value")
        n, stop = first, "decided"
        later_p = None
        if verdict.status is Status.INCONCLUSIVE:
            stop = "budget"
            for n in points[1:]:
                more = replace(spec, params={**spec.params, grows: n})
                verdict = rejudge(definition.run(context, more, adapter), confidence=each, seed=self.seed)
                if verdict.status is not Status.INCONCLUSIVE:
                    stop = "decided"
                    break
            later_p = verdict.detail.get("p_value")
        detail = {**verdict.detail, "sequential": summary(n, budget, points.index(n) + 1, stop, each)}
        if isinstance(first_p, float):
            # The p-value of the whole procedure, for the run's multiplicity adjustment: it
            # decides when the first look's p is at most alpha or a later look's at most
            # alpha / (looks - 1), and either half can err by alpha, hence the factor 2.
            candidates = [first_p] + ([later_p * (len(points) - 1)] if isinstance(later_p, float) else [])
            detail["p_value"] = min(1.0, 2 * min(candidates))
        return replace(verdict, detail=detail)

    @property
    def seed(self) -> int:
        return self.session.settings.seed

    def check_scene(self, suite: Suite, spec: CheckSpec, adapter: str) -> Scene:
        """The check's ``scene:``, else the adapter's scene; one that the suite's scenes
        file does not define is a ``path:line`` error."""
        world = self.world(suite)
        scene_id = spec.params.get("scene") or self.adapter(adapter).scene
        if scene_id not in world.scenes:
            raise SuiteError(suite.path, spec.line,
                             f"check {spec.name!r}: adapter {adapter!r} speaks scene {scene_id!r}, which "
                             f"{world.scenes.path} does not define; add it there or set `scene:`")
        return world.scenes[scene_id]

    def check_register(self, suite: Suite, spec: CheckSpec, adapter: str) -> str:
        """The check's ``register:``, else the adapter's role; it must be a register."""
        world = self.world(suite)
        register = spec.params.get("register") or self.adapter(adapter).role
        if register not in world.registers:
            raise SuiteError(suite.path, spec.line,
                             f"check {spec.name!r}: adapter {adapter!r} has role {register!r}, which is "
                             f"not a register ({', '.join(world.registers)}); set `register:`")
        return register


#: Texts per chunk of :func:`embed_shared`: one encoder batch.
SHARED_CHUNK = 64


def embed_shared(scorer: Any, texts: Sequence[str]) -> None:
    """Put the vectors of *texts* in the scorer's cache, the run's xdist workers side by side.

    The texts go in chunks around a ring, each worker starting at its own place in it and
    skipping the chunks another worker has stored meanwhile: two workers that start
    together meet halfway, each having embedded half (a chunk they reach at the same
    moment is the only one embedded twice), and neither waits on the other. A worker alone
    goes round the whole ring. The chunks are the
    same whoever embeds them, so every vector is that of a run without xdist.
    """
    from ..workers import worker_count, worker_index

    chunks = [list(texts[i : i + SHARED_CHUNK]) for i in range(0, len(texts), SHARED_CHUNK)]
    start = len(chunks) * worker_index() // worker_count()
    for chunk in chunks[start:] + chunks[:start]:
        scorer.embed(chunk)  # texts the cache holds are read, not embedded
