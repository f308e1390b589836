"""Adapter files: the single-file ``<scene>_<role>.safetensors`` format and PEFT folders.

Reading is two-staged. :func:`read_adapter` parses headers and metadata only (no torch),
refusing anything unsafe or malformed; :func:`load_tensors` reads the weights and refuses
NaN or Inf. :func:`validate` checks an adapter against a base: the exact keys and shapes
PEFT would expect are computed by building the PEFT model on the ``meta`` device, so the
check follows PEFT's own target-module rules and costs no memory even for a 7B base.
"""

from __future__ import annotations

import enum
import functools
import glob
import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AdapterFormatError, AdapterMismatchError, UnsafeFormatError
from ..fsutil import atomic_dir, atomic_path, canonical_json
from .lora_config import ignored_config_keys, lora_config, lora_kwargs
from .safetensors_header import MAX_HEADER, TensorEntry, excerpt, read_header

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
METADATA_KEYS = ("scene", "role", "base_model", "base_fingerprint", "train_data_sha256",
                 "created_with")


class AdapterFormat(str, enum.Enum):
    FILE = "file"
    PEFT_DIR = "peft-dir"


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter is, read from its headers: cheap, and safe on untrusted files."""

    name: str
    path: Path
    format: AdapterFormat
    weights_path: Path
    peft_config: dict[str, Any]
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    content_hash: str

    @property
    def scene(self) -> str | None:
        return self.metadata.get("scene") or parse_name(self.name)[0]

    @property
    def role(self) -> str | None:
        return self.metadata.get("role") or parse_name(self.name)[1]

    @property
    def rank(self) -> int:
        return int(self.peft_config.get("r", 0))

    @property
    def alpha(self) -> float:
        return self.peft_config.get("lora_alpha", 0)

    @property
    def target_modules(self) -> list[str] | str:
        targets = self.peft_config.get("target_modules")
        return targets if isinstance(targets, str) else sorted(targets or [])

    @property
    def base_model(self) -> str:
        return self.metadata.get("base_model") or self.peft_config.get("base_model_name_or_path") or ""

    @property
    def base_fingerprint(self) -> str:
        return self.metadata.get("base_fingerprint", "")

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


@dataclass
class Validation:
    """The findings of :func:`validate`: errors make an adapter unusable, warnings don't."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_first(self) -> None:
        if self.errors:
            raise AdapterMismatchError(self.errors[0])


# ------------------------------------------------------------------------------- naming


def normalize_name(name: str) -> str:
    """NFC, so that a Δ typed on one system matches the Δ in a file name from another."""
    return unicodedata.normalize("NFC", name)


def parse_name(name: str) -> tuple[str | None, str | None]:
    """``Δ42_poetic`` -> (``Δ42``, ``poetic``): the scene is everything before the last ``_``."""
    name = normalize_name(name)
    scene, sep, role = name.rpartition("_")
    if not sep or not scene or not role:
        return None, None
    return scene, role


def adapter_name(path: Path) -> str:
    path = Path(path)
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    return normalize_name(stem)


# ------------------------------------------------------------------------------ reading


def _refuse_pickle(path: Path) -> None:
    raise UnsafeFormatError(
        f"{path}: pickle-based weights are refused, because unpickling runs arbitrary code; "
        "convert it to safetensors on a machine you trust (PEFT: save_pretrained(..., "
        "safe_serialization=True)) and pass that instead"
    )


def _content_hash(weights: Path, tensors: Mapping[str, TensorEntry], peft_config: dict) -> str:
    """sha256 over the LoRA config and every tensor's name, dtype, shape and bytes.

    The same adapter hashes the same in either format, and any changed byte of any
    tensor changes the hash: this is the adapter's identity in every cache key.
    """
    h = hashlib.sha256()
    config = {k: v for k, v in peft_config.items()
              if k not in ("base_model_name_or_path", "revision", "inference_mode", "peft_version")}
    h.update(canonical_json(config).encode("utf-8"))
    with open(weights, "rb") as fh:
        for key in sorted(tensors):
            entry = tensors[key]
            h.update(f"\n{key}:{entry.dtype}:{list(entry.shape)}\n".encode())
            fh.seek(entry.start)
            h.update(fh.read(entry.nbytes))
    return h.hexdigest()


def read_adapter(path: str | os.PathLike[str]) -> AdapterInfo:
    """Read an adapter's headers: a ``.safetensors`` file or a PEFT adapter folder."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        _refuse_pickle(path)
    if not path.exists():
        raise AdapterFormatError(f"{path}: no such adapter file or directory")
    if path.is_dir():
        return _read_peft_dir(path)
    if path.suffix != SUFFIX:
        raise AdapterFormatError(
            f"{path}: not an adapter: expected a {SUFFIX} file or a PEFT adapter folder"
        )
    metadata, tensors, _ = read_header(path)
    if "peft_config" not in metadata:
        raise AdapterFormatError(
            f"{path}: no 'peft_config' in the safetensors metadata, so its LoRA config is "
            "unknown; write it with `scenelora convert` from a PEFT folder, or save it with "
            "pytest_scenelora.engine.adapters.save_adapter_file"
        )
    try:
        peft_config = json.loads(metadata["peft_config"])
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise AdapterFormatError(f"{path}: metadata 'peft_config' is not JSON (or nests too "
                                 "deeply to be a config)") from None
    _check_config(path, peft_config)
    _check_not_empty(path, tensors)
    return AdapterInfo(
        name=adapter_name(path),
        path=path,
        format=AdapterFormat.FILE,
        weights_path=path,
        peft_config=peft_config,
        metadata={k: v for k, v in metadata.items() if k != "peft_config"},
        tensors=tensors,
        content_hash=_content_hash(path, tensors, peft_config),
    )


def _read_peft_dir(path: Path) -> AdapterInfo:
    config_path = path / PEFT_CONFIG
    weights = path / PEFT_WEIGHTS
    if not config_path.is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            _refuse_pickle(path / pickles[0])
        raise AdapterFormatError(
            f"{path}: a directory without {PEFT_CONFIG} is not a PEFT adapter; "
            f"point --adapter at the adapter files inside it, or save it with save_pretrained"
        )
    if not weights.is_file():
        if any((path / f"adapter_model{s}").exists() for s in PICKLE_SUFFIXES):
            _refuse_pickle(path / "adapter_model.bin")
        raise AdapterFormatError(f"{path}: {PEFT_WEIGHTS} is missing next to {PEFT_CONFIG}")
    try:
        text = config_path.read_bytes() if config_path.stat().st_size <= MAX_HEADER else None
    except OSError as exc:
        raise AdapterFormatError(f"{config_path}: cannot read: {exc.strerror or exc}") from None
    if text is None:
        raise AdapterFormatError(f"{config_path}: too large for an adapter config; the folder "
                                 "is corrupt or crafted")
    try:
        peft_config = json.loads(text.decode("utf-8"))
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AdapterFormatError(f"{config_path}: not valid JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise AdapterFormatError(f"{config_path}: the JSON nests too deeply to be an adapter "
                                 "config; the folder is corrupt or crafted") from None
    _check_config(config_path, peft_config)
    metadata, tensors, _ = read_header(weights)
    _check_not_empty(weights, tensors)
    metadata = {k: v for k, v in metadata.items() if k != "peft_config"}
    return AdapterInfo(
        name=adapter_name(path),
        path=path,
        format=AdapterFormat.PEFT_DIR,
        weights_path=weights,
        peft_config=peft_config,
        metadata=metadata,
        tensors=tensors,
        content_hash=_content_hash(weights, tensors, peft_config),
    )


def _check_config(path: Path, config: Any) -> None:
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path}: the PEFT config is not a JSON object")
    lora_kwargs(config, path)


def _check_not_empty(path: Path, tensors: Mapping[str, TensorEntry]) -> None:
    if not tensors:
        raise AdapterFormatError(f"{path}: holds no tensors; re-save or re-train the adapter")


def load_tensors(info: AdapterInfo) -> dict[str, torch.Tensor]:
    """The adapter's weights, refusing NaN and Inf (they would poison every output)."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(info.weights_path))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise AdapterFormatError(f"{info.weights_path}: cannot read tensors: {exc}") from None
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise AdapterFormatError(
                f"{info.weights_path}: tensor {key!r} holds {bad} NaN/Inf values; "
                "the training diverged: retrain with a lower learning rate"
            )
    return tensors


# ------------------------------------------------------------------------------ writing


def config_to_dict(config: Any) -> dict[str, Any]:
    """A LoraConfig (or its dict) as plain JSON types: enums by value, sets sorted."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, set | frozenset):
            return sorted(plain(v) for v in value)
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(raw)


def created_with() -> str:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("pytest-scenelora", "torch", "transformers", "peft"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "unknown"
    return canonical_json(versions)


def build_metadata(
    peft_config: Mapping[str, Any],
    *,
    scene: str | None = None,
    role: str | None = None,
    base_model: str = "",
    base_fingerprint: str = "",
    train_data_sha256: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    metadata = {
        "format": "pt",
        "scenelora_format": FORMAT_VERSION,
        "peft_config": json.dumps(dict(peft_config), sort_keys=True, ensure_ascii=False),
        "base_model": base_model,
        "base_fingerprint": base_fingerprint,
        "created_with": created_with(),
    }
    if scene:
        metadata["scene"] = normalize_name(scene)
    if role:
        metadata["role"] = normalize_name(role)
    if train_data_sha256:
        metadata["train_data_sha256"] = train_data_sha256
    metadata.update(extra or {})
    return metadata


def save_adapter_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    peft_config: Mapping[str, Any] | Any,
    **provenance: Any,
) -> Path:
    """Write the single-file format atomically; returns the path written.

    *tensors* are PEFT state-dict keys as ``get_peft_model_state_dict`` returns them;
    *provenance* are the keyword arguments of :func:`build_metadata`.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise AdapterFormatError(f"{path}: an adapter file must end in {SUFFIX}")
    config = config_to_dict(peft_config)
    metadata = build_metadata(config, **provenance)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)
    return path


def save_adapter_dir(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    peft_config: Mapping[str, Any] | Any,
    **provenance: Any,
) -> Path:
    """Write PEFT's folder format atomically, keeping our provenance in the weights' metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    config = config_to_dict(peft_config)
    metadata = build_metadata(config, **provenance)
    metadata.pop("peft_config")
    with atomic_dir(path) as tmp:
        (tmp / PEFT_CONFIG).write_text(
            json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(tmp / PEFT_WEIGHTS), metadata=metadata)
    return path


def _provenance(info: AdapterInfo) -> dict[str, Any]:
    known = {k: info.metadata[k] for k in METADATA_KEYS if info.metadata.get(k)}
    extra = {k: v for k, v in info.metadata.items()
             if k not in METADATA_KEYS and k not in ("format", "scenelora_format")}
    return {
        "scene": known.get("scene") or info.scene,
        "role": known.get("role") or info.role,
        "base_model": known.get("base_model") or info.base_model,
        "base_fingerprint": known.get("base_fingerprint", ""),
        "train_data_sha256": known.get("train_data_sha256"),
        "extra": {**extra, **{k: v for k, v in known.items() if k == "created_with"}},
    }


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Convert between the single-file format and a PEFT folder, losslessly.

    A file becomes a folder and a folder becomes a file; tensors are copied bit for bit
    and every metadata key survives the round trip. When *dst* is an existing directory
    and the source is a folder, the file is written inside it as ``<name>.safetensors``.
    """
    info = read_adapter(src)
    tensors = load_tensors(info)
    dst = Path(dst)
    if info.format is AdapterFormat.FILE:
        if dst.suffix == SUFFIX:
            raise AdapterFormatError(f"{dst}: converting a file gives a PEFT folder; name a directory")
        return save_adapter_dir(dst, tensors, info.peft_config, **_provenance(info))
    if dst.is_dir():
        dst = dst / f"{info.name}{SUFFIX}"
    return save_adapter_file(dst, tensors, info.peft_config, **_provenance(info))


# --------------------------------------------------------------------------- discovery


def discover(specs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand ``--adapter`` values: a file, a folder of adapters, a PEFT folder, or a glob."""
    found: dict[Path, None] = {}
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if path.is_dir() and not (path / PEFT_CONFIG).is_file():
            members = sorted(
                [*path.glob(f"*{SUFFIX}"), *(p for p in path.iterdir() if (p / PEFT_CONFIG).is_file())]
            )
            if not members:
                raise AdapterFormatError(
                    f"{path}: no adapters here (no *{SUFFIX} files and no PEFT adapter folders)"
                )
            found.update(dict.fromkeys(members))
        elif path.exists():
            found[path] = None
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise AdapterFormatError(f"{text}: the glob matches no adapter file")
            found.update(dict.fromkeys(matches))
        else:
            raise AdapterFormatError(f"{path}: no such adapter file or directory")
    return list(found)


# -------------------------------------------------------------------------- validation


@functools.lru_cache(maxsize=64)
def _expected_tensors(base_dir: str, config_json: str) -> dict[str, tuple[int, ...]]:
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from .quiet import peft_wrapping_quietly

    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    with torch.device("meta"), peft_wrapping_quietly():
        model = AutoModelForCausalLM.from_config(config)
        peft_model = get_peft_model(model, lora_config(json.loads(config_json)))
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}


def expected_tensors(base_dir: Path, peft_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The keys and shapes PEFT produces for *peft_config* on the base in *base_dir*."""
    return _expected_tensors(str(base_dir), canonical_json(dict(peft_config)))


def validate(info: AdapterInfo, base_dir: Path, base_fingerprint: str | None = None) -> Validation:
    """Check that *info* fits the base in *base_dir*; never raises for a misfit."""
    from .bases import fingerprint

    found = Validation()
    where = info.path
    try:  # an AdapterInfo made by hand has not been through read_adapter's check
        lora_kwargs(info.peft_config, where)
    except AdapterFormatError as exc:
        found.errors.append(str(exc))
        return found
    ignored = ignored_config_keys(info.peft_config)
    if ignored:
        found.warnings.append(
            f"{where}: peft_config sets {', '.join(map(excerpt, ignored))}, which scenelora does "
            "not know and does not pass to PEFT; the adapter is tested without them"
        )
    try:
        expected = expected_tensors(base_dir, info.peft_config)
    except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model."
        message = str(exc).strip().splitlines()[0]
        found.errors.append(f"{where}: does not fit base {base_dir}: {message}")
        return found
    actual = {k: t.shape for k, t in info.tensors.items()}
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    if missing:
        found.errors.append(
            f"{where}: {len(missing)} tensor(s) missing for its LoRA config, e.g. {missing[0]!r}; "
            "the file is incomplete or its peft_config does not describe it"
        )
    base_own = [k for k in unexpected if k.endswith(".bias") and ".lora_" not in k]
    if base_own and str(info.peft_config.get("bias", "none")) != "none":
        found.errors.append(
            f"{where}: holds {len(base_own)} bias vector(s) of the base itself (bias="
            f"{excerpt(info.peft_config.get('bias'))}), e.g. {excerpt(base_own[0])}: loading them "
            "would overwrite the base every other adapter shares; retrain with bias='none'"
        )
    elif unexpected:
        found.errors.append(
            f"{where}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]!r}; "
            "they would be silently ignored by PEFT, so the adapter is not what it claims"
        )
    for key in sorted(set(expected) & set(actual)):
        if tuple(actual[key]) != tuple(expected[key]):
            found.errors.append(
                f"{where}: tensor {key!r} has shape {list(actual[key])} but base {base_dir.name} "
                f"needs {list(expected[key])}; the adapter was trained on another base"
            )
            break
    base_fp = base_fingerprint or fingerprint(base_dir)
    if info.base_fingerprint and info.base_fingerprint != base_fp and found.ok:
        found.warnings.append(
            f"{where}: trained on base {info.base_model or '?'} (fingerprint "
            f"{info.base_fingerprint[:12]}) but used with {base_dir} (fingerprint {base_fp[:12]}); "
            "shapes fit, but outputs may not mean what they did"
        )
    return found
