"""Trained adapters cached under a content hash, built once under a file lock, written
atomically with a canonical header, and published into the caller's folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...fsutil import (
    atomic_path,
    atomic_write_bytes,
    cache_home,
    canonical_json,
    file_lock,
    set_aside,
    sha256_bytes,
    sha256_file,
)
from .. import adapters as adapter_files
from ..progress import Progress
from .data import TrainingSet, build_training_set
from .loop import Trained, cpu_kernels, deterministic_torch, hf_progress_bars_off, run_training
from .spec import RECIPE_VERSION, TrainSpec


@dataclass(frozen=True)
class TrainResult:
    """A trained (or reused) adapter: where it is, what it is, and what it cost."""

    path: Path
    info: adapter_files.AdapterInfo
    steps_trained: int
    reused_cache: bool
    seconds: float
    final_loss: float | None
    cache_path: Path
    key: str

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.info.metadata

    def summary(self) -> str:
        """The one line ``scenelora train`` prints for this adapter."""
        if self.reused_cache:
            return f"reused cached adapter {self.path}"
        loss = f", final loss {self.final_loss:.4f}" if self.final_loss is not None else ""
        return f"trained {self.name} in {self.steps_trained} steps ({self.seconds:.1f}s{loss}): {self.path}"


def cache_key(spec: TrainSpec, base_content: str, training_set: TrainingSet, device: str) -> str:
    """The content hash an adapter is cached under (no paths: content only). *base_content*
    is :func:`~.models.weights_hash`: a base retrained with the same shapes is another base."""
    hyper = spec.hyperparameters()
    hyper["device"] = device
    hyper["input_mode"] = training_set.input_mode.value
    return sha256_bytes(
        f"scenelora-adapter-v{RECIPE_VERSION}",
        base_content,
        training_set.data_sha256,
        training_set.key,
        canonical_json(hyper),
        adapter_files.created_with(),
    )


def adapter_cache_dir(key: str) -> Path:
    return cache_home() / "adapters" / key[:32]


def canonicalize_header(path: Path) -> None:
    """Rewrite a safetensors file's header with its keys sorted, atomically.

    safetensors keeps ``__metadata__`` in a Rust ``HashMap``, whose order changes from
    one process to the next, so the same tensors and metadata give different bytes.
    Sorting the header is what makes the same training give a byte-identical file.
    The tensor data is untouched (its offsets are relative to the end of the header).
    """
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    canonical = struct.pack("<Q", len(text)) + text + raw[8 + size :]
    if canonical != raw:
        atomic_write_bytes(Path(path), canonical)


_STAGING = "staging"


def _clear_stale_temps(directory: Path, name: str) -> None:
    # We hold the key's lock, so anything half-written here is from a killed process.
    for stale in [*directory.glob(f".{name}.*.tmp"), *(directory / _STAGING).glob("*")]:
        with contextlib.suppress(OSError):
            stale.unlink()


def _readable(path: Path) -> adapter_files.AdapterInfo | None:
    """The cached adapter at *path*, or None when there is none or it cannot be read."""
    return _read_cached(path)[0]


def _read_cached(path: Path) -> tuple[adapter_files.AdapterInfo | None, str | None]:
    """(the cached adapter, None), (None, None) when absent, or (None, what is wrong with it).

    The file is our own cache entry, so whatever stops it from being read (a truncated
    or overwritten file, a header the reader refuses) means it is damaged, never that
    the request is wrong: it is set aside and the adapter trained again.
    """
    if not path.is_file():
        return None, None
    try:
        return adapter_files.read_adapter(path), None
    except Exception as exc:  # any failure to read our own cache entry is damage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"the cached adapter cannot be read ({first[:200]})"


def _publish(cached: Path, out_dir: Path | None) -> Path:
    """Copy the cached file into *out_dir* atomically (or hand back the cache path)."""
    if out_dir is None:
        return cached
    target = Path(out_dir) / cached.name
    if target.is_file() and sha256_file(target) == sha256_file(cached):
        return target
    with atomic_path(target) as tmp:
        shutil.copyfile(cached, tmp)
    return target


def train(
    spec: TrainSpec,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    cache: bool = True,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the adapter *spec* describes (or reuse the cached one) into *out_dir*.

    Writes ``<out_dir>/<scene>_<role>.safetensors`` atomically, with the DESIGN metadata
    (base fingerprint, ``train_data_sha256``, the training settings). ``cache=False``
    trains even when a cached adapter exists, and refreshes the cache with the result.
    With ``out_dir=None`` the result's path is the file in the cache.
    """
    from ..bases import fingerprint, load_base, pick_device, resolve_base, weights_hash

    started = time.perf_counter()
    training_set = build_training_set(spec)  # data errors first: they are the cheapest to find
    base_dir = resolve_base(spec.base)
    spec, training_set = in_prompt_format(spec, training_set, base_dir)
    base_fp = fingerprint(base_dir)
    device = pick_device(spec.device)
    key = cache_key(spec, weights_hash(base_dir), training_set, device)
    cached = adapter_cache_dir(key) / f"{spec.name}{adapter_files.SUFFIX}"

    def finish(steps: int, loss: float | None, reused: bool) -> TrainResult:
        path = _publish(cached, Path(out_dir) if out_dir is not None else None)
        return TrainResult(path=path, info=adapter_files.read_adapter(path), steps_trained=steps,
                           reused_cache=reused, seconds=time.perf_counter() - started,
                           final_loss=loss, cache_path=cached, key=key)

    if cache and (info := _readable(cached)) is not None:
        return finish(0, _recorded_loss(info), True)
    with file_lock(cached):
        info, damage = _read_cached(cached)
        if cache and info is not None:  # another process trained it
            return finish(0, _recorded_loss(info), True)
        if damage is not None:
            set_aside(cached, damage)
        _clear_stale_temps(cached.parent, cached.name)
        with deterministic_torch(spec.threads, device):
            with hf_progress_bars_off():
                base = load_base(spec.base, device=spec.device, quantize=spec.quantize)
            trained = run_training(spec, training_set, base, progress)
        # Write and canonicalize beside the cache entry, then rename: a reader never sees
        # the file before its bytes are final.
        staging = cached.parent / _STAGING / cached.name
        adapter_files.save_adapter_file(
            staging, trained.tensors, trained.config,
            scene=spec.scene, role=spec.role, base_model=spec.base, base_fingerprint=base_fp,
            train_data_sha256=training_set.data_sha256,
            extra={"train_config": canonical_json({**spec.hyperparameters(), "device": device,
                                                   "input_mode": training_set.input_mode.value,
                                                   "examples": len(training_set.pairs),
                                                   "cpu_kernels": cpu_kernels()}),
                   "train_final_loss": f"{trained.final_loss:.6f}",
                   "prompt_format": spec.prompt_format.value,
                   "train_recipe": str(RECIPE_VERSION),
                   "train_recipe_from": spec.recipe_origin},
        )
        canonicalize_header(staging)
        os.replace(staging, cached)
        _log_build(cached, spec, trained, time.perf_counter() - started)
    return finish(trained.steps, trained.final_loss, False)


def in_prompt_format(spec: TrainSpec, training_set: TrainingSet, base_dir: Path
                     ) -> tuple[TrainSpec, TrainingSet]:
    """*spec* with ``auto`` resolved against the base, and its training set's prompts in that
    format: under ``chat`` each prompt goes through the base's chat template, exactly as the
    checks' prompts will (:mod:`..chat`), so a voice is tested the way it was trained."""
    from dataclasses import replace

    from ..chat import PromptFormat, prompt_formatter, resolve_prompt_format

    resolved = resolve_prompt_format(spec.prompt_format, base_dir)
    if resolved is not spec.prompt_format:
        spec = replace(spec, prompt_format=resolved)
    if resolved is PromptFormat.CHAT:
        chat = prompt_formatter(resolved, base_dir)
        training_set = replace(training_set, pairs=tuple((chat(p), t) for p, t in training_set.pairs))
    return spec, training_set


def _recorded_loss(info: adapter_files.AdapterInfo) -> float | None:
    try:
        return float(info.metadata["train_final_loss"])
    except (KeyError, ValueError):
        return None


def _log_build(cached: Path, spec: TrainSpec, trained: Trained, seconds: float) -> None:
    """One JSON line per training run in the key's folder: how often it was really trained."""
    line = canonical_json({"adapter": spec.name, "steps": trained.steps, "pid": os.getpid(),
                           "seconds": round(seconds, 3), "final_loss": round(trained.final_loss, 6)})
    with open(cached.parent / "builds.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def build_count(result: TrainResult) -> int:
    """How many times the adapter under *result*'s cache key has actually been trained."""
    log = result.cache_path.parent / "builds.jsonl"
    if not log.is_file():
        return 0
    return sum(1 for line in log.read_text(encoding="utf-8").splitlines() if line.strip())
