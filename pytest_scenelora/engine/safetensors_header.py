"""Safetensors headers, read defensively: the one parser for adapter files and base weights.

:func:`read_header` checks every field of a header before anything reads tensor bytes, so
both :mod:`.adapters` (untrusted adapter files) and :mod:`.bases` (a base's weights, for its
fingerprint) can rely on what it returns. It imports nothing of this package but
:mod:`..errors`, so the modules above it never import each other for it.
"""

from __future__ import annotations

import json
import math
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdapterFormatError

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
                "F8_E5M2": 1}
#: The largest header (and PEFT config file) read: a bigger one is corrupt or crafted.
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the weights file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path, error: type[Exception] = AdapterFormatError
                ) -> tuple[dict[str, str], dict[str, TensorEntry], int]:
    """Parse a safetensors header defensively: (metadata, tensors, data start offset).

    Every field's type and range is checked before anything reads tensor bytes: dtypes
    this module knows, shapes of non-negative integers, offsets that are non-negative,
    ordered, as long as the shape says, inside the file, and laid end to end with no
    overlap, gap or trailing bytes (what safetensors itself requires, so a file that
    passes here is one ``load_file`` reads). Every problem is one line naming *path*,
    raised as *error* (a base's weights are read with :class:`~.errors.BaseModelError`).
    """
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise error(f"{path}: not a regular file; pass a .safetensors file or a PEFT adapter folder")
        size = status.st_size
        if size == 0:
            raise error(f"{path}: the file is empty; save or copy it again")
        if size < 8:
            raise error(f"{path}: truncated ({size} bytes), not a safetensors file")
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > MAX_HEADER or header_len > size - 8:
                raise error(
                    f"{path}: header claims {header_len} bytes but the file has {size}; "
                    "the file is corrupt or not safetensors"
                )
            raw = fh.read(header_len)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) != header_len:
        raise error(f"{path}: the file changed while it was read; copy it again")
    header = _parse_header_json(path, raw, error)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise error(f"{path}: __metadata__ is {kind_of(metadata)}, not an object of strings")
    for name, value in metadata.items():
        if not isinstance(value, str):
            raise error(f"{path}: __metadata__ {excerpt(name)} is {kind_of(value)}; "
                        "every metadata value must be a string")
    data_start = 8 + header_len
    tensors = {key: _tensor_entry(path, key, entry, data_start, size, error)
               for key, entry in header.items()}
    _check_layout(path, tensors, data_start, size, error)
    return metadata, tensors, data_start


class _DuplicateKey(ValueError):
    """A JSON object names one key twice (json keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys, safetensors may keep another: refuse both
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_header_json(path: Path, raw: bytes, error: type[Exception]) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise error(f"{path}: the safetensors header names {excerpt(exc.args[0])} twice; "
                    "the file is corrupt or crafted") from None
    except RecursionError:
        raise error(f"{path}: the safetensors header nests too deeply to be a header; "
                    "the file is corrupt or crafted") from None
    except (UnicodeDecodeError, ValueError):  # json.JSONDecodeError is a ValueError
        raise error(
            f"{path}: the safetensors header is not JSON; the file is corrupt or not safetensors"
        ) from None
    if not isinstance(header, dict):
        raise error(f"{path}: the safetensors header is {kind_of(header)}, not a JSON object")
    return header


def is_count(value: Any) -> bool:
    """A JSON integer >= 0 (``true`` is an int to Python, not to JSON)."""
    return type(value) is int and value >= 0


def _tensor_entry(path: Path, key: str, entry: Any, data_start: int, size: int,
                  error: type[Exception]) -> TensorEntry:
    name = excerpt(key)
    if not isinstance(entry, dict):
        raise error(f"{path}: tensor {name}: its header entry is {kind_of(entry)}, not an object")
    missing = [f for f in ("dtype", "shape", "data_offsets") if f not in entry]
    if missing:
        raise error(f"{path}: tensor {name}: its header entry lacks {', '.join(missing)}; "
                    "the file is corrupt")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        raise error(f"{path}: tensor {name} has dtype {excerpt(dtype)}, which is not a "
                    f"safetensors dtype this reads ({', '.join(_DTYPE_BYTES)})")
    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise error(f"{path}: tensor {name} has shape {excerpt(shape)}; a shape is a list "
                    "of non-negative integers: the file is corrupt")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(o) for o in offsets):
        raise error(f"{path}: tensor {name} has data_offsets {excerpt(offsets)}; expected "
                    "[start, end], two non-negative integers: the file is corrupt")
    start, end = offsets
    if end < start:
        raise error(f"{path}: tensor {name} ends (byte {end}) before it starts (byte {start}); "
                    "the file is corrupt")
    width = _DTYPE_BYTES[dtype]
    count = math.prod(shape)
    if end - start != count * width:
        raise error(
            f"{path}: tensor {name} claims shape {shape} {dtype} but holds "
            f"{end - start} bytes; the file is corrupt"
        )
    if data_start + end > size:
        raise error(
            f"{path}: truncated: tensor {name} ends at byte {data_start + end} "
            f"of a {size}-byte file; copy or download it again"
        )
    return TensorEntry(dtype, tuple(shape), data_start + start, data_start + end)


def _check_layout(path: Path, tensors: Mapping[str, TensorEntry], data_start: int, size: int,
                  error: type[Exception]) -> None:
    """Tensors lie end to end from the header on: no overlap (two names for the same
    bytes), no gap and nothing after the last one (bytes no tensor accounts for)."""
    position = data_start
    for key, entry in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start < position:
            raise error(f"{path}: tensor {excerpt(key)} overlaps the bytes of another tensor "
                        f"(from byte {entry.start}); the file is corrupt or crafted")
        if entry.start > position:
            raise error(f"{path}: bytes {position}-{entry.start} lie between tensors and belong "
                        "to none; the file is corrupt or crafted")
        position = entry.end
    if position != size:
        raise error(f"{path}: {size - position} bytes follow the last tensor and belong to none; "
                    "the file is corrupt or crafted")


def kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def excerpt(value: Any, limit: int = 60) -> str:
    """*value*'s repr, cut: a hostile header can hold megabytes in one name or shape."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"
