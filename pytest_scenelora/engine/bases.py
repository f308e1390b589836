"""Base models: presets, offline resolution, fingerprints, and loading.

A base is named by ``tiny`` (built locally, see :mod:`pytest_scenelora.engine.tinybase`), a
preset name, a local directory, or a Hugging Face id that must already be in the local
HF cache. Nothing here ever touches the network: a base that is not on disk is a
:class:`~pytest_scenelora.errors.BaseModelNotFoundError` naming what was looked for.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BaseModelError, BaseModelNotFoundError
from .quiet import import_peft_quietly, quiet_transformers
from .safetensors_header import read_header

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Quantization(str, enum.Enum):
    NONE = "none"
    INT8 = "8bit"
    NF4 = "4bit"


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class BasePreset:
    """A named base of a model family scenelora has a preset for."""

    name: str
    hf_id: str
    family: str
    note: str


PRESETS: dict[str, BasePreset] = {
    p.name: p
    for p in (
        BasePreset("mistral-7b", "mistralai/Mistral-7B-v0.1", "mistral",
                   "neutral, logical output; stable on long contexts"),
        BasePreset("qwen1.5-1.8b", "Qwen/Qwen1.5-1.8B", "qwen2",
                   "small; affective and archetypal scenes"),
        BasePreset("saiga-mistral-7b", "IlyaGusev/saiga_mistral_7b_merged", "mistral",
                   "Russian-tuned Saiga on Mistral 7B (merged weights)"),
        BasePreset("saiga-llama3-8b", "IlyaGusev/saiga_llama3_8b", "llama",
                   "Russian-tuned Saiga on Llama 3 8B"),
        BasePreset("rugpt3-small", "ai-forever/rugpt3small_based_on_gpt2", "gpt2",
                   "small Russian GPT-2 for quick experiments"),
    )
}

TINY = "tiny"


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache, as huggingface_hub would resolve it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(hf_home) / "hub"


def find_in_hf_cache(hf_id: str) -> Path | None:
    """The snapshot directory of *hf_id* in the local HF cache, or None. No network."""
    repo = hf_cache_dir() / ("models--" + hf_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = snapshots / ref.read_text().strip()
        if (snap / "config.json").is_file():
            return snap
    candidates = sorted(
        (p for p in snapshots.iterdir() if (p / "config.json").is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return candidates[-1] if candidates else None


def resolve_base(name: str | os.PathLike[str]) -> Path:
    """Turn ``tiny``, a preset, a local directory or a cached HF id into a directory."""
    text = os.fspath(name)
    if text == TINY:
        from .tinybase import ensure_tiny_base

        return ensure_tiny_base()
    from . import gguf

    if text in gguf.GGUF_PRESETS:  # shipped as a GGUF by a PyPI package: converted once
        return gguf.ensure_gguf_base(gguf.packaged_gguf(gguf.GGUF_PRESETS[text]), preset=text)
    preset = PRESETS.get(text)
    hf_id = preset.hf_id if preset else text
    local = Path(text).expanduser()
    if preset is None and local.exists():
        if gguf.is_gguf_source(local):
            return gguf.ensure_gguf_base(local)
        if not (local / "config.json").is_file():
            raise BaseModelNotFoundError(
                f"{local}: not a model directory (no config.json) and no .gguf file; "
                "pass a folder written by save_pretrained, a .gguf file, a preset, or 'tiny'"
            )
        return local.resolve()
    cached = find_in_hf_cache(hf_id) if "/" in hf_id else None
    if cached is not None:
        return cached
    looked = f"{local.resolve()} (local path)"
    if "/" in hf_id and not local.is_absolute():
        looked += f" and {hf_id!r} in the HF cache {hf_cache_dir()}"
    how = (
        f"download it once with `huggingface-cli download {hf_id}` on a connected machine"
        if "/" in hf_id
        else f"use 'tiny', a preset ({', '.join(all_preset_names())}), a local directory, "
        "a .gguf file or an HF id"
    )
    raise BaseModelNotFoundError(f"base model {text!r} not found: looked for {looked}; {how}")


def preset_rows() -> list[dict[str, str]]:
    """Rows for ``scenelora base list``: name, HF id, family and where it is on disk."""
    rows = []
    from .tinybase import tiny_base_dir

    tiny_dir = tiny_base_dir()
    rows.append({"name": TINY, "hf_id": "(built locally)", "family": "llama",
                 "on_disk": str(tiny_dir) if tiny_dir.is_dir() else "not built yet"})
    for preset in PRESETS.values():
        found = find_in_hf_cache(preset.hf_id)
        rows.append({"name": preset.name, "hf_id": preset.hf_id, "family": preset.family,
                     "on_disk": str(found) if found else "no"})
    from . import gguf

    for packaged in gguf.GGUF_PRESETS.values():
        rows.append({"name": packaged.name, "hf_id": f"(GGUF from the {packaged.distribution} package)",
                     "family": packaged.family, "on_disk": gguf.preset_status(packaged)})
    return rows


def all_preset_names() -> list[str]:
    """Every name ``--base-model`` takes besides paths and HF ids."""
    from .gguf import GGUF_PRESETS

    return [TINY, *PRESETS, *GGUF_PRESETS]


# ---------------------------------------------------------------------------- fingerprint

def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise BaseModelError(
            f"{model_dir}: no *.safetensors weights; save the base with "
            "save_pretrained(safe_serialization=True) (pickle weights are not read)"
        )
    return files


def tensor_index(model_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every tensor of a base, from the file headers alone."""
    index: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in weight_files(model_dir):
        _, tensors, _ = read_header(path, error=BaseModelError)
        for name, entry in tensors.items():
            index[name] = (entry.shape, entry.dtype)
    return index


def fingerprint(model_dir: Path) -> str:
    """sha256 over the base's config and every tensor's name, shape and dtype.

    Reads only headers, so it costs milliseconds even for a 7B base; it changes when
    the architecture or the checkpoint layout changes, which is what invalidates
    adapters and cached generations. Volatile config keys (versions) are left out.
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    for volatile in ("transformers_version", "_name_or_path", "_commit_hash"):
        config.pop(volatile, None)
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True).encode("utf-8"))
    for name, (shape, dtype) in sorted(tensor_index(model_dir).items()):
        h.update(f"\n{name}:{list(shape)}:{dtype}".encode())
    return h.hexdigest()


def weights_hash(model_dir: Path) -> str:
    """sha256 over the base's config and the bytes of its weight files: its content identity.

    The fingerprint says which architecture adapters fit; this says which weights produced
    a cached generation or a cached trained adapter, so a base retrained with the same
    shapes never serves stale results. Each file's digest is remembered under
    ``<cache home>/file-hashes.json`` by path, size and mtime, so a 7B base is read once.
    """
    from .hashmemo import file_sha256s

    model_dir = Path(model_dir).resolve()
    h = hashlib.sha256(fingerprint(model_dir).encode("ascii"))
    files = weight_files(model_dir)
    for path, digest in zip(files, file_sha256s(files), strict=True):
        h.update(f"\n{path.name}:{digest}".encode())
    return h.hexdigest()


# -------------------------------------------------------------------------------- loading


@dataclass
class LoadedBase:
    """A base model in memory, with what every cache key and report needs to know."""

    name: str
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    device: str
    dtype: str
    quantization: Quantization
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        q = "" if self.quantization is Quantization.NONE else f", {self.quantization.value}"
        return f"{self.name} ({self.device}, {self.dtype}{q}, fingerprint {self.fingerprint[:12]})"


def pick_device(device: Device | str) -> str:
    import torch

    device = Device(device)
    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.CUDA and not torch.cuda.is_available():
        raise BaseModelError(
            "--device cuda was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    return device.value


def pick_dtype(device: str) -> torch.dtype:
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def linear_widths(model: Any) -> list[tuple[str, int, int]]:
    import torch

    return [
        (name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]


def quantization_config(quantization: Quantization, device: str, model_dir: Path) -> Any:
    """A BitsAndBytesConfig, after checking that this platform can run it."""
    if quantization is Quantization.NONE:
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:  # pragma: no cover - bitsandbytes is a hard dependency
        raise BaseModelError(f"--quantize {quantization.value} needs bitsandbytes ({exc})") from None
    import torch

    if quantization is Quantization.NF4:
        if device == "cpu":
            bad = [
                f"{name}[{shape[-1]}x{shape[0]}]"
                for name, (shape, _) in tensor_index(model_dir).items()
                if name.endswith(".weight") and len(shape) == 2 and "embed" not in name
                and (shape[0] % 32 or shape[1] % 32)
            ]
            if bad:
                raise BaseModelError(
                    f"--quantize 4bit on CPU needs every linear width divisible by 32; "
                    f"{model_dir} has {len(bad)} that are not (e.g. {bad[0]}); "
                    "use --quantize 8bit or a CUDA device"
                )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    return tokenizer


def load_base(
    name: str = TINY,
    *,
    device: Device | str = Device.AUTO,
    quantize: Quantization | str = Quantization.NONE,
) -> LoadedBase:
    """Load a base and its tokenizer for inference, offline."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    import_peft_quietly()
    model_dir = resolve_base(name)
    resolved_device = pick_device(device)
    quantization = Quantization(quantize)
    dtype = pick_dtype(resolved_device)
    qconfig = quantization_config(quantization, resolved_device, model_dir)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": resolved_device if resolved_device == "cpu" else 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(f"{model_dir}: cannot load the base model: {first}") from None
    if qconfig is None:
        model.to(resolved_device)
    model.eval()
    model.requires_grad_(False)
    return LoadedBase(
        name=os.fspath(name),
        path=model_dir,
        model=model,
        tokenizer=load_tokenizer(model_dir),
        fingerprint=fingerprint(model_dir),
        device=resolved_device,
        dtype=str(dtype).removeprefix("torch."),
        quantization=quantization,
    )
