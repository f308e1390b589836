"""Checks on the shipped text fixtures (fixtures/): sizes, formats, counts, leaks.

Plain pytest with yaml/json only: these fixtures are data the tiny base model, the
adapter trainer and the register classifier are built from, so their contract is
tested on its own, without importing the package.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REGISTERS = ("logic", "poetic", "body", "silence")
GENERATED = ("topics.yaml", "scenes.yaml", "registers.yaml", "corpus/en.txt",
             "corpus/ru.txt", "train/roles.jsonl")
HOME_SCENE = "Δ42"
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
WORD_RE = re.compile(r"[a-z]+")

# Lexical markers of each register, for a coarse check that needs no embedder.
MARKERS = {
    "logic": {"because", "therefore", "follows", "consequently", "hence", "reason",
              "conclusion", "evidence", "if", "then", "so", "first", "second", "cause",
              "effect", "logic", "logically", "means", "thus", "since", "explains"},
    "poetic": {"like", "as", "moon", "silver", "dream", "dreams", "song", "sings", "light",
               "rivers", "river", "stars", "glows", "shines", "petal", "poem", "whispers"},
    "body": {"my", "i", "breath", "skin", "hands", "shoulders", "heart", "ache", "aches",
             "pulse", "throat", "chest", "muscles", "fingers", "sweat", "palms", "back",
             "feet", "knees", "eyes", "spine", "wrists", "tired"},
    "silence": {"nothing", "silence", "quiet", "still", "hush", "words", "waiting",
                "empty", "pause", "no", "sound", "stillness", "waits", "quieter"},
}


def lexical_register(text: str) -> str:
    words = WORD_RE.findall(text.lower())
    scores = {name: sum(w in markers for w in words) for name, markers in MARKERS.items()}
    # Silence is made of very short sentences: reward that shape.
    per_sentence = len(words) / max(1, len(SENTENCE_SPLIT_RE.split(text)))
    if per_sentence <= 5:
        scores["silence"] += 3
    return max(REGISTERS, key=lambda name: scores[name])


def sentences(text: str) -> int:
    return len(SENTENCE_SPLIT_RE.split(text))


@pytest.fixture(scope="module")
def topics() -> list[dict]:
    return yaml.safe_load((FIXTURES / "topics.yaml").read_text("utf-8"))["topics"]


@pytest.fixture(scope="module")
def scenes_file() -> dict:
    return yaml.safe_load((FIXTURES / "scenes.yaml").read_text("utf-8"))


@pytest.fixture(scope="module")
def registers() -> list[dict]:
    return yaml.safe_load((FIXTURES / "registers.yaml").read_text("utf-8"))["registers"]


@pytest.fixture(scope="module")
def corpus() -> str:
    return (FIXTURES / "corpus" / "en.txt").read_text("utf-8")


@pytest.fixture(scope="module")
def corpus_docs(corpus: str) -> list[tuple[str, str]]:
    docs = []
    for block in corpus.rstrip("\n").split("\n\n"):
        header, paragraph = block.split("\n")
        docs.append((header, paragraph))
    return docs


@pytest.fixture(scope="module")
def training_text() -> str:
    return (FIXTURES / "train" / "roles.jsonl").read_text("utf-8")


@pytest.fixture(scope="module")
def training(training_text: str) -> list[dict]:
    return [json.loads(line) for line in training_text.splitlines()]


def train_scenes(scenes_file: dict) -> list[dict]:
    return [s for s in scenes_file["scenes"] if s["split"] == "train"]


def unseen_scenes(scenes_file: dict) -> list[dict]:
    return [s for s in scenes_file["scenes"] if s["split"] == "unseen"]


def core_fields(scenes_file: dict, core: str) -> dict[str, str] | None:
    """The fields a core fills the structure's template with, or None if it does not."""
    structure = scenes_file["structure"]
    pattern = re.escape(structure["core"])
    for name, words in structure["fields"].items():
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{alternatives})")
    found = re.fullmatch(pattern, core)
    return found.groupdict() if found else None


def scene_headers(corpus_docs) -> list[tuple[str, str]]:
    """(core, paragraph) of every `Scene:` document of the corpus."""
    return [(h[len("Scene: "):], p) for h, p in corpus_docs if h.startswith("Scene: ")]


def combination_examples(training: list[dict]) -> list[dict]:
    """Training lines with an explicit `Scene:` prompt instead of a scene id."""
    return [r for r in training if "scene" not in r and "topic" not in r]


# -- topics ------------------------------------------------------------------------------


def test_topics_have_ids_descriptions_and_large_vocabularies(topics):
    assert len(topics) >= 14
    ids = [t["id"] for t in topics]
    assert len(set(ids)) == len(ids)
    for topic in topics:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", topic["id"]), topic["id"]
        assert topic["title"].strip()
        description = topic["description"]
        assert description.isascii() and description.endswith(".")
        assert sentences(description) == 1, description
        words = topic["words"]
        assert len(words) >= 80, (topic["id"], len(words))
        assert len(set(words)) == len(words), topic["id"]
        assert all(isinstance(w, str) and w.strip() and w.isascii() for w in words)


# -- scenes ------------------------------------------------------------------------------


def test_scene_structure_fields(scenes_file):
    structure = scenes_file["structure"]
    fields = structure["fields"]
    assert set(fields) == {"figure", "place", "object", "time", "action"}
    for name, values in fields.items():
        assert len(values) >= 16, name
        assert len(set(values)) == len(values), name
        for value in values:
            assert value.isascii() and value == value.strip()
            if name != "time":
                assert value.split()[0].lower() not in {"a", "an", "the"}, (name, value)
    assert set(re.findall(r"\{(\w+)\}", structure["core"])) == set(fields)


def test_every_core_is_the_template_filled_with_its_fields(scenes_file):
    structure = scenes_file["structure"]
    for scene in scenes_file["scenes"]:
        assert scene["core"] == structure["core"].format(**scene["fields"]), scene["id"]
        for name, value in scene["fields"].items():
            assert value in structure["fields"][name], (scene["id"], name, value)


def test_scenes_shape_and_splits(scenes_file):
    scenes = scenes_file["scenes"]
    ids = [s["id"] for s in scenes]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"Δ\d\d", i) for i in ids)
    for scene in scenes:
        assert scene["title"].strip()
        assert scene["input"] in {"token", "fragment"}
        assert scene["split"] in {"train", "unseen"}
        assert 3 <= len(scene["motifs"]) <= 5
        assert set(scene["motifs"]) <= set(scene["fields"].values()), scene["id"]
    train = [s["id"] for s in train_scenes(scenes_file)]
    unseen = [s["id"] for s in unseen_scenes(scenes_file)]
    assert HOME_SCENE in train
    assert len(train) >= 7
    assert {"Δ71", "Δ77", "Δ88"} <= set(unseen)
    home = next(s for s in scenes if s["id"] == HOME_SCENE)
    assert "lighthouse" in home["fields"]["figure"] and home["fields"]["action"] == "lets go of"


def test_scenes_are_far_apart(scenes_file):
    """No two scenes share a figure, a place or an object; no train scene is an unseen one."""
    for a, b in itertools.combinations(scenes_file["scenes"], 2):
        for name in ("figure", "place", "object"):
            assert a["fields"][name] != b["fields"][name], (a["id"], b["id"], name)
    train_cores = {s["core"] for s in train_scenes(scenes_file)}
    assert not train_cores & {s["core"] for s in unseen_scenes(scenes_file)}


# -- registers ---------------------------------------------------------------------------


def test_registers_cover_every_topic(registers, topics):
    assert [r["name"] for r in registers] == list(REGISTERS)
    topic_ids = {t["id"] for t in topics}
    for register in registers:
        assert register["description"].strip()
        per_topic = collections.Counter(ref["topic"] for ref in register["references"])
        assert set(per_topic) == topic_ids, register["name"]
        assert min(per_topic.values()) >= 3, register["name"]
        for ref in register["references"]:
            assert ref["text"].isascii() and 3 <= sentences(ref["text"]) <= 6


def test_reference_texts_are_lexically_their_register(registers):
    for register in registers:
        texts = [ref["text"] for ref in register["references"]]
        hits = sum(lexical_register(t) == register["name"] for t in texts)
        assert hits / len(texts) >= 0.9, (register["name"], hits, len(texts))


# -- English corpus ----------------------------------------------------------------------


def test_corpus_size_and_vocabulary(corpus):
    assert len(corpus.encode("utf-8")) >= 330_000
    assert len(set(WORD_RE.findall(corpus.lower()))) >= 3000
    assert corpus.isascii()


def test_corpus_document_format(corpus, corpus_docs, topics, scenes_file):
    assert corpus.endswith("\n") and not corpus.endswith("\n\n")
    assert "\n\n\n" not in corpus
    descriptions = {t["description"] for t in topics}
    for header, paragraph in corpus_docs:
        kind, _, value = header.partition(": ")
        assert kind in {"Topic", "Scene"}, header
        if kind == "Topic":
            assert value in descriptions, header
        else:  # a train scene's core or a random combination's: the template filled
            assert core_fields(scenes_file, value) is not None, header
        assert 3 <= sentences(paragraph) <= 6, paragraph
        assert not re.search(r"\b(logic|poetic|silence)\b\s*:", paragraph.lower())


def test_corpus_has_every_topic_and_scene_in_every_register(corpus_docs, topics, scenes_file):
    found = collections.Counter()
    for header, paragraph in corpus_docs:
        found[(header, lexical_register(paragraph))] += 1
    headers = [f"Topic: {t['description']}" for t in topics]
    headers += [f"Scene: {s['core']}" for s in train_scenes(scenes_file)]
    for header in headers:
        for register in REGISTERS:
            assert found[(header, register)] >= 3, (header, register)


def test_scene_documents_reuse_their_fields(corpus_docs, scenes_file):
    cores = {s["core"] for s in train_scenes(scenes_file)}
    for core, paragraph in scene_headers(corpus_docs):
        fields = core_fields(scenes_file, core)
        assert fields["figure"] in paragraph or fields["object"] in paragraph
        assert fields["place"] in paragraph
        if core not in cores:  # a combination names its figure, object and place
            assert fields["figure"] in paragraph and fields["object"] in paragraph, core


def test_corpus_has_many_random_combinations(corpus_docs, scenes_file):
    listed = {s["core"] for s in scenes_file["scenes"]}
    combos = collections.Counter(c for c, _ in scene_headers(corpus_docs) if c not in listed)
    assert len(combos) >= 2000 and max(combos.values()) == 1
    found = collections.Counter(lexical_register(p) for c, p in scene_headers(corpus_docs)
                                if c not in listed)
    assert min(found[r] for r in REGISTERS) >= 400, found
    # Every word of every field is used by some combination: the base knows them all.
    used = collections.defaultdict(set)
    for core in combos:
        for name, value in core_fields(scenes_file, core).items():
            used[name].add(value)
    for name, words in scenes_file["structure"]["fields"].items():
        assert used[name] == set(words), name


def test_russian_corpus():
    text = (FIXTURES / "corpus" / "ru.txt").read_bytes().decode("utf-8")
    assert len(text.encode("utf-8")) >= 20_000
    assert text.endswith("\n") and "\n\n\n" not in text
    headers = collections.Counter()
    for block in text.rstrip("\n").split("\n\n"):
        header, paragraph = block.split("\n")
        kind = header.split(": ")[0]
        assert kind in {"Тема", "Сцена"}, header
        headers[kind] += 1
        letters = re.findall(r"[^\W\d_]", paragraph)
        assert sum("а" <= c.lower() <= "я" or c.lower() == "ё" for c in letters) / len(letters) > 0.95
    assert headers["Тема"] and headers["Сцена"]


# -- training data -----------------------------------------------------------------------


def test_every_training_line_is_valid(training_text, topics, scenes_file):
    topic_by_id = {t["id"]: t for t in topics}
    scene_ids = {s["id"] for s in train_scenes(scenes_file)}
    assert training_text.endswith("\n")
    for line in training_text.splitlines():
        record = json.loads(line)
        assert record["role"] in REGISTERS
        text = record["text"]
        assert 2 <= sentences(text) <= 5, text
        assert len(text.split()) <= 60, text
        if "scene" in record:
            assert set(record) == {"scene", "role", "text"}
            assert record["scene"] in scene_ids
        elif "topic" in record:
            assert set(record) == {"topic", "role", "prompt", "text"}
            topic = topic_by_id[record["topic"]]
            assert record["prompt"] == f"Topic: {topic['description']}"
        else:  # a random combination, given as the corpus's scene header
            assert set(record) == {"role", "prompt", "text"}
            assert record["prompt"].startswith("Scene: ")
            assert core_fields(scenes_file, record["prompt"][len("Scene: "):]) is not None
    assert "\\u" not in training_text  # ensure_ascii=False: Δ is written as is


def test_training_counts(training, topics, scenes_file):
    counts = collections.Counter(
        (r.get("scene") or r.get("topic"), r["role"]) for r in training)
    for scene in train_scenes(scenes_file):
        minimum = 160 if scene["id"] == HOME_SCENE else 40
        for role in REGISTERS:
            assert counts[(scene["id"], role)] >= minimum, (scene["id"], role)
    for topic in topics:
        for role in REGISTERS:
            assert counts[(topic["id"], role)] >= 12, (topic["id"], role)
    combos = collections.Counter(r["role"] for r in combination_examples(training))
    for role in REGISTERS:
        assert combos[role] >= 50, role


def test_training_texts_are_about_their_scene_or_topic(training, topics, scenes_file):
    fields = {s["id"]: s["fields"] for s in train_scenes(scenes_file)}
    words = {t["id"]: t["words"] for t in topics}
    for record in training:
        text = record["text"]
        if "scene" in record:
            f = fields[record["scene"]]
            assert f["figure"] in text or f["object"] in text, text
        elif "prompt" in record and record["prompt"].startswith("Scene: "):
            f = core_fields(scenes_file, record["prompt"][len("Scene: "):])
            assert f["figure"] in text and f["object"] in text and f["place"] in text, text
        else:
            assert any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE)
                       for w in words[record["topic"]]), text


def test_training_roles_are_lexically_their_register(training):
    per_role = collections.defaultdict(list)
    for record in training:
        per_role[record["role"]].append(lexical_register(record["text"]) == record["role"])
    for role, hits in per_role.items():
        assert sum(hits) / len(hits) >= 0.9, role


def test_training_texts_differ_from_corpus_and_references(training, corpus_docs, registers):
    texts = [r["text"] for r in training]
    assert len(set(texts)) == len(texts)
    others = {p for _, p in corpus_docs}
    others |= {ref["text"] for reg in registers for ref in reg["references"]}
    assert not set(texts) & others


# -- unseen scenes -----------------------------------------------------------------------


def test_unseen_scenes_appear_nowhere(scenes_file, corpus, training_text, registers):
    russian = (FIXTURES / "corpus" / "ru.txt").read_text("utf-8")
    references = "\n".join(ref["text"] for reg in registers for ref in reg["references"])
    blobs = {"corpus/en.txt": corpus, "corpus/ru.txt": russian,
             "train/roles.jsonl": training_text, "registers.yaml": references}
    for scene in unseen_scenes(scenes_file):
        f = scene["fields"]
        needles = [scene["id"], scene["core"],
                   f"{f['figure']} {f['action']} the {f['object']}"]
        for name, blob in blobs.items():
            for needle in needles:
                assert needle not in blob, (scene["id"], name, needle)
    assert not re.search(r"Scene: Δ", corpus)


def test_held_out_words(scenes_file):
    """A third or so of each field is held out; the unseen scenes use only those words."""
    structure = scenes_file["structure"]
    held = structure["held_out"]
    assert set(held) == set(structure["fields"])
    for name, words in held.items():
        vocabulary = structure["fields"][name]
        assert len(set(words)) == len(words) and set(words) <= set(vocabulary), name
        assert len(vocabulary) // 4 <= len(words) <= len(vocabulary) // 2, name
    for scene in unseen_scenes(scenes_file):
        for name, value in scene["fields"].items():
            assert value in held[name], (scene["id"], name, value)
    for scene in train_scenes(scenes_file):
        for name, value in scene["fields"].items():
            assert value not in held[name], (scene["id"], name, value)


def test_held_out_words_are_never_trained_scene_content(scenes_file, corpus_docs, training):
    """No scene or combination example of the adapters' training data uses a held-out word;
    no corpus `Scene:` header is made of held-out words alone (so no scene the unseen check
    draws is a corpus document), though the base's corpus does use them in combinations."""
    held = scenes_file["structure"]["held_out"]
    train_ids = {s["id"] for s in train_scenes(scenes_file)}
    trained = []
    for record in training:
        if "scene" in record:
            assert record["scene"] in train_ids
        elif "topic" not in record:
            trained.append(record["prompt"][len("Scene: "):])
    assert len(trained) >= 200
    for core in trained + [s["core"] for s in train_scenes(scenes_file)]:
        fields = core_fields(scenes_file, core)
        assert fields is not None, core
        for name, value in fields.items():
            assert value not in held[name], (core, name, value)
    some_held = 0
    for core, _ in scene_headers(corpus_docs):
        fields = core_fields(scenes_file, core)
        assert fields is not None, core
        flags = [value in held[name] for name, value in fields.items()]
        assert not all(flags), core
        some_held += any(flags)
    assert some_held > 1000


def test_combinations_are_distinct_and_new(scenes_file, corpus_docs, training):
    listed = {s["core"] for s in scenes_file["scenes"]}
    in_corpus = {c for c, _ in scene_headers(corpus_docs)} - listed
    prompts = [r["prompt"][len("Scene: "):] for r in combination_examples(training)]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & (in_corpus | listed)


# -- the generator -----------------------------------------------------------------------


def test_generator_is_deterministic(tmp_path):
    result = subprocess.run(
        [sys.executable, str(FIXTURES / "generate.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), name


def test_total_fixture_size_is_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()
                and "__pycache__" not in p.parts)
    assert total < 3 * 1024 * 1024
