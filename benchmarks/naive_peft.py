"""The shipped suites the way a careful user would run them with plain transformers + PEFT.

This is the reference that ``bench_suites.py`` measures scenelora against, so it does the
same work and computes the same numbers, only without the harness:

- for each adapter: load the base afresh (``AutoModelForCausalLM.from_pretrained``) and
  ``PeftModel.from_pretrained`` the adapter (from a PEFT folder; single-file adapters are
  converted to one first, outside the timed work);
- generate each sample alone with ``model.generate``: one prompt, one row, per call. The
  suites sample, so each sample uses the seed scenelora gives it and the same sampler
  (:func:`pytest_scenelora.engine.generation.sample_row`, plugged in as a logits processor that
  leaves ``generate`` one token to pick): the texts are the same, and so are the scores;
- embed each output alone with sentence-transformers (memoised in a dict for the run:
  a careful user does not embed one text twice, but keeps nothing on disk);
- score with the same pure check functions (``pytest_scenelora.checks``) and the same
  per-check plumbing as the runner, so the comparison is of the expensive parts only:
  loading, generating and embedding.

``tests/test_naive_reference.py`` checks on a small case that the texts and the scores
(to 1e-6) are scenelora's. Run it alone:

    python benchmarks/naive_peft.py suites/scene_field.yaml --adapter DIR [--adapter ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pytest_scenelora.checks.runner import Request, SuiteRunner
from pytest_scenelora.engine import adapters as adapter_files
from pytest_scenelora.engine.generation import GenerationConfig
from pytest_scenelora.engine.lora_config import lora_config
from pytest_scenelora.engine.sampling import decision_margin, sample_row
from pytest_scenelora.scoring.embedders import Embedder
from pytest_scenelora.settings import Settings
from pytest_scenelora.suite import load_suite


@dataclass
class NaiveStats:
    samples: int = 0
    new_tokens: int = 0
    embedded: int = 0
    base_loads: int = 0


class OneAtATimeEmbedder(Embedder):
    """sentence-transformers, one text per ``encode`` call, memoised in memory only."""

    def __init__(self, stats: NaiveStats, name: str | None = None) -> None:
        super().__init__(name, device="cpu", cache=None)
        self.pick_threads = False  # a plain script encodes on the threads torch was given
        self.stats = stats
        self.memo: dict[str, Any] = {}

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        rows = []
        for text in texts:
            if text not in self.memo:
                self.memo[text] = super().embed([text])[0]
                self.stats.embedded += 1
            rows.append(self.memo[text])
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)


class SeededSampler:
    """A logits processor that draws the row's token with its own seeded generator and
    leaves ``generate`` (run greedy) nothing else to choose.

    With a *trace* list, each step appends ``(token, margin)``: the token drawn and how far
    the logits were from drawing another (:func:`decision_margin`), so a comparison with
    scenelora's batched decode can tell a rounding near-tie from a real difference.
    """

    def __init__(self, config: GenerationConfig, seed: int,
                 trace: list[tuple[int, float]] | None = None) -> None:
        import torch

        self.config = config
        self.generator = torch.Generator().manual_seed(int(seed))
        self.trace = trace

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        state = self.generator.get_state() if self.trace is not None else None
        token = sample_row(scores[0].cpu(), self.config, self.generator)
        if self.trace is not None:
            self.trace.append((token, decision_margin(scores[0].cpu(), self.config, state)[1]))
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


@dataclass
class LoadedAdapter:
    """One adapter on its own freshly loaded base, as the user's loop holds it."""

    name: str
    info: adapter_files.AdapterInfo
    peft_dir: Path
    base_dir: Path
    model: Any
    tokenizer: Any
    stats: NaiveStats
    device: str = "cpu"
    texts: dict[tuple[str | None, str, int], str] = field(default_factory=dict)
    #: per sample, each step's (token, decision margin); filled when tracing (see run_naive)
    traces: dict[tuple[str | None, str, int], list[tuple[int, float]]] | None = None

    @classmethod
    def load(cls, info: adapter_files.AdapterInfo, peft_dir: Path, base_dir: Path, stats: NaiveStats,
             device: str = "cpu") -> LoadedAdapter:
        model = load_peft(base_dir, peft_dir, device)
        stats.base_loads += 1
        from pytest_scenelora.engine.bases import load_tokenizer

        return cls(info.name, info, peft_dir, base_dir, model, load_tokenizer(base_dir), stats, device)

    # what the runner asks of "its library"
    def entry(self, name: str) -> Any:
        return self.info

    def logits(self, prompts: Sequence[str], adapters: Any = None, *, model: Any = None) -> Any:
        import torch

        rows = []
        names = adapters if isinstance(adapters, list) else [adapters] * len(prompts)
        for prompt, adapter in zip(prompts, names, strict=True):
            encoded = self.tokenizer(prompt, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                if model is not None:
                    out = model(**encoded)
                elif adapter is None:
                    with self.model.disable_adapter():
                        out = self.model(**encoded)
                else:
                    out = self.model(**encoded)
            rows.append(out.logits[0, -1].float().cpu())
        return torch.stack(rows)

    def merged(self, name: str) -> Any:
        # the user's way: a fresh base, the adapter loaded onto it, merged
        return load_peft(self.base_dir, self.peft_dir, self.device).merge_and_unload()

    def __contains__(self, name: str) -> bool:
        return name == self.name

    def combine(self, name: str, weights: Any) -> str:
        # the shipped suites merge at weight 1 only, so the reference never combines; a suite
        # that sets `weight:` is outside what this benchmark compares
        raise ValueError(f"naive_peft: {name!r}: weighted combinations are not part of the "
                         "compared work; run the benchmark on suites without `weight:`")

    def generate_one(self, prompt: str, adapter: str | None, config: GenerationConfig, seed: int,
                     trace: list[tuple[int, float]] | None = None) -> str:
        import torch

        encoded = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": config.max_new_tokens, "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id,
        }
        if config.do_sample:
            kwargs["logits_processor"] = [SeededSampler(config, seed, trace)]
        with torch.inference_mode():
            if adapter is None:
                with self.model.disable_adapter():
                    out = self.model.generate(**encoded, **kwargs)
            else:
                out = self.model.generate(**encoded, **kwargs)
        new = out[0, encoded["input_ids"].shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        self.stats.samples += 1
        self.stats.new_tokens += len(new)
        new = new[: new.index(eos)] if eos in new else new
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


#: ``--quantize`` for the reference, set by :func:`run_naive` ("none", "8bit", "4bit").
QUANTIZE = "none"


def load_peft(base_dir: Path, peft_dir: Path, device: str = "cpu") -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pytest_scenelora.engine.bases import Quantization, quantization_config

    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # what scenelora loads too
    qconfig = quantization_config(Quantization(QUANTIZE), device, base_dir)
    if qconfig is None:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True).to(device)
    else:
        base = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=dtype, local_files_only=True, quantization_config=qconfig,
            device_map={"": device if device == "cpu" else 0})
    # through scenelora's gate, as the library loads it: a stored initialisation that
    # rewrites base layers (PiSSA, OLoRA...) never runs on the reference's base
    info = adapter_files.read_adapter(peft_dir)
    adapter_files.validate(info, base_dir).raise_first()
    model = PeftModel.from_pretrained(base, str(peft_dir), is_trainable=False,
                                      config=lora_config(info.peft_config, where=info.path))
    return model.eval()


class _Session:
    """The little of a scenelora session the runner's check plumbing reads."""

    def __init__(self, settings: Settings, adapter_paths: list[Path]) -> None:
        self.settings = settings
        self.adapter_paths = adapter_paths


class NaiveRunner(SuiteRunner):
    """The runner's checks, fed by one-at-a-time generation and embedding and no cache."""

    def __init__(self, settings: Settings, adapter_paths: list[Path], stats: NaiveStats) -> None:
        super().__init__(_Session(settings, adapter_paths), cache=_NoCache())
        self.stats = stats
        self.current: LoadedAdapter | None = None
        self._embedder: OneAtATimeEmbedder | None = None

    @property
    def library(self) -> Any:
        return self.current

    @property
    def model_loaded(self) -> bool:
        return False

    def scorer(self, suite: Any) -> Any:
        if self._embedder is None:
            self._embedder = OneAtATimeEmbedder(self.stats, suite.embedder or self.session.settings.embedder)
        return self._embedder

    def texts(self, requests: Sequence[Request], config: GenerationConfig) -> list[list[str]]:
        out = []
        for req in requests:
            samples = []
            for i in range(req.n):
                key = (req.adapter, req.prompt, i)
                if key not in self.current.texts:  # this adapter's loop already made it
                    trace = None if self.current.traces is None else self.current.traces.setdefault(key, [])
                    self.current.texts[key] = self.current.generate_one(
                        req.prompt, req.adapter, config, self.sample_seed(req.prompt, i), trace)
                samples.append(self.current.texts[key])
            out.append(samples)
        return out

    def cached_logits(self, what: str, adapter: str, probes: Sequence[str], compute: Any,
                      **identity: Any) -> Any:
        return compute()


class _NoCache:
    """Stands in for the result cache: nothing is looked up or kept (only a lock file's place)."""

    path = Path(tempfile.gettempdir()) / "naive-peft-no-cache"


@dataclass
class NaiveResult:
    verdicts: dict[tuple[str, str], Any]  # (check item name, adapter) -> Verdict
    texts: dict[tuple[str, str | None, str, int], str]  # (adapter, row adapter, prompt, i) -> text
    stats: NaiveStats
    wall_s: float
    #: the same keys -> each step's (token, decision margin), when run with ``trace=True``
    traces: dict[tuple[str, str | None, str, int], list[tuple[int, float]]] = field(default_factory=dict)


def run_naive(suite_paths: Sequence[Path], adapter_paths: Sequence[Path], *,
              base: str = "tiny", seed: int = 0, threads: int | None = None,
              device: str = "cpu", quantize: str = "none", trace: bool = False) -> NaiveResult:
    """Run the suites' checks on each adapter in turn, the plain way; returns verdicts.

    *threads* sets ``torch.set_num_threads`` (default: torch's own choice, as a plain
    script leaves it). *trace* records every sampled step's decision margin (slower: it is
    for comparisons, not for timing).
    """
    import torch

    from pytest_scenelora.engine.bases import quiet_transformers, resolve_base

    global QUANTIZE
    QUANTIZE = quantize
    if threads:
        torch.set_num_threads(threads)
    quiet_transformers()
    base_dir = resolve_base(base)
    infos = [adapter_files.read_adapter(p) for p in adapter_paths]
    suites = [load_suite(Path(p)) for p in suite_paths]
    # the user's adapters in PEFT's folder format (not timed: a one-off conversion)
    folders = Path(tempfile.mkdtemp(prefix="naive-peft-"))
    peft_dirs = {info.name: adapter_files.convert(info.path, folders / info.name)
                 if info.path.is_file() else info.path
                 for info in infos}
    stats = NaiveStats()
    settings = Settings(adapters=tuple(str(p) for p in adapter_paths), base_model=base, device=device,
                        quantize=quantize, seed=seed)
    runner = NaiveRunner(settings, [Path(p) for p in adapter_paths], stats)
    verdicts: dict[tuple[str, str], Any] = {}
    texts: dict[tuple[str, str | None, str, int], str] = {}
    traces: dict[tuple[str, str | None, str, int], list[tuple[int, float]]] = {}
    start = time.perf_counter()
    for info in infos:
        runner.current = LoadedAdapter.load(info, peft_dirs[info.name], base_dir, stats, device)
        if trace:
            runner.current.traces = {}
        for suite in suites:
            if not suite.selects(info.name):
                continue
            for spec in suite.checks:
                verdicts[(spec.name, info.name)] = runner.run(suite, spec, info.name)
        texts.update({(info.name, *k): v for k, v in runner.current.texts.items()})
        traces.update({(info.name, *k): v for k, v in (runner.current.traces or {}).items()})
        runner.current = None
    return NaiveResult(verdicts, texts, stats, time.perf_counter() - start, traces)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+", type=Path)
    parser.add_argument("--adapter", action="append", required=True, help="file, folder or glob")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write verdicts and counts here")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--quantize", default="none", choices=("none", "8bit", "4bit"))
    args = parser.parse_args(argv)
    paths = adapter_files.discover(args.adapter)
    suites = [p for s in args.suites for p in (sorted(s.glob("*.yaml")) if s.is_dir() else [s])]
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = run_naive(suites, paths, base=args.base_model, seed=args.seed, threads=args.threads,
                       device=device, quantize=args.quantize)
    for (check, adapter), verdict in result.verdicts.items():
        print(f"{check}[{adapter}]: {verdict.status.value} score={verdict.score:.6g}")
    s = result.stats
    if args.json:
        import json
        from dataclasses import asdict

        args.json.write_text(json.dumps({
            "wall_s": result.wall_s, "stats": asdict(s),
            "verdicts": {f"{check}[{adapter}]": v.to_dict()
                         for (check, adapter), v in result.verdicts.items()},
        }, ensure_ascii=False), encoding="utf-8")
    print(f"naive: {result.wall_s:.1f} s, {s.samples} samples, {s.new_tokens} new tokens, "
          f"{s.embedded} texts embedded, {s.base_loads} base loads", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
