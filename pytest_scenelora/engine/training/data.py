"""The training set: examples read and checked line by line, prompted the way tests
prompt, tokenised, and batched in a seeded order."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import shipped
from ...errors import TrainingDataError, TrainingError
from ...fsutil import canonical_json, sha256_bytes, sha256_file
from ...prompts import InputMode, scene_prompt, topic_prompt
from .. import adapters as adapter_files
from .spec import TrainSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Example:
    """One training line: a target text in a role, about a scene or a topic."""

    role: str
    text: str
    source: str  # "path:line", for messages
    scene: str | None = None
    topic: str | None = None
    prompt: str | None = None


_EXAMPLE_KEYS = ("scene", "topic", "role", "text", "prompt")


def read_examples(path: str | os.PathLike[str]) -> list[Example]:
    """Parse a JSONL training file, one example a line; every bad line is reported.

    A line holds ``role`` and ``text``, and ``scene`` or ``topic`` (or an explicit
    ``prompt``). Blank lines are skipped. Problems are collected so that one run names
    them all, each as ``path:line: what is wrong``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TrainingDataError([f"{path}: no such training data file; pass --data PATH"]) from None
    except OSError as exc:
        raise TrainingDataError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    examples: list[Example] = []
    problems: list[str] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{where}: not UTF-8 text; save the file as UTF-8")
            continue
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); write one "
                            'object a line, e.g. {"scene": "Δ42", "role": "poetic", "text": "..."}')
            continue
        problem = _check_record(record)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        examples.append(Example(
            role=adapter_files.normalize_name(record["role"].strip()),
            text=record["text"].strip(),
            source=where,
            scene=adapter_files.normalize_name(str(record["scene"]).strip()) if "scene" in record else None,
            topic=str(record["topic"]).strip() if "topic" in record else None,
            prompt=record.get("prompt"),
        ))
    if problems:
        raise TrainingDataError(problems)
    if not examples:
        raise TrainingDataError([f"{path}: holds no examples; write one JSON object a line"])
    return examples


def _check_record(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"a line must be a JSON object, not {type(record).__name__}"
    for key in record:
        if key not in _EXAMPLE_KEYS:
            close = difflib.get_close_matches(str(key), _EXAMPLE_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(_EXAMPLE_KEYS)}"
            return f"unknown key {key!r}; {hint}"
    for key in ("role", "text"):
        if key not in record:
            return f"no {key!r}; every example needs a role and a text"
        if not isinstance(record[key], str) or not record[key].strip():
            return f"{key!r} must be non-empty text, not {record[key]!r}"
    if "_" in record["role"]:
        return f"role {record['role']!r} holds '_', which adapter names use to split scene from role"
    for key in ("scene", "topic"):
        if key in record and (not isinstance(record[key], str | int) or not str(record[key]).strip()):
            return f"{key!r} must be a non-empty id, not {record[key]!r}"
    if "scene" in record and "topic" in record:
        return "a line has both 'scene' and 'topic'; an example is about one of them"
    if "prompt" in record and (not isinstance(record["prompt"], str) or not record["prompt"].strip()):
        return f"'prompt' must be non-empty text, not {record['prompt']!r}; or leave it out"
    if not any(k in record for k in ("scene", "topic", "prompt")):
        return "no 'scene', 'topic' or 'prompt'; say what the text is about"
    return None


@dataclass(frozen=True)
class TrainingSet:
    """The rendered (prompt, text) pairs one adapter trains on, with their provenance."""

    pairs: tuple[tuple[str, str], ...]
    data_sha256: str
    input_mode: InputMode

    @property
    def key(self) -> str:
        return sha256_bytes(canonical_json([list(p) for p in self.pairs]))


def _header(prompt: str) -> str:
    # A prompt is a header line (as in the base's corpus); keep the text on its own line.
    return prompt if prompt.endswith(("\n", " ")) else prompt + "\n"


def build_training_set(spec: TrainSpec) -> TrainingSet:
    """Select the examples of ``spec.role`` and give each its prompt (DESIGN "Training data")."""
    from ...scenes import Split, load_scenes, load_topics

    data = spec.data_path
    examples = read_examples(data)
    roles = sorted({e.role for e in examples})
    chosen = [e for e in examples if e.role == spec.role]
    if not chosen:
        close = difflib.get_close_matches(spec.role, roles, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"its roles are {', '.join(roles)}"
        raise TrainingDataError([f"{data}: no examples in role {spec.role!r}; {hint}"])
    if not any(e.scene == spec.scene for e in chosen):
        scenes = sorted({e.scene for e in chosen if e.scene})
        raise TrainingDataError([
            f"{data}: no examples of scene {spec.scene!r} in role {spec.role!r}, so the adapter "
            f"could never learn what {spec.scene} means; its scenes are {', '.join(scenes) or 'none'}"
        ])

    scenes_path = spec.scenes if spec.scenes is not None else shipped.scenes_file()
    topics_path = spec.topics if spec.topics is not None else shipped.topics_file()
    scene_set = load_scenes(scenes_path)
    topics = load_topics(topics_path) if any(e.topic and not e.prompt for e in chosen) else {}
    mode = spec.input_mode or (scene_set.scenes[spec.scene].input if spec.scene in scene_set
                               else InputMode.TOKEN)
    problems: list[str] = []

    # Unseen scenes must stay unseen: refuse them anywhere in the file, not just this role.
    unseen = {s.id for s in scene_set.split(Split.UNSEEN)}
    for e in examples:
        if e.scene in unseen:
            problems.append(f"{e.source}: scene {e.scene!r} is marked `split: unseen` in "
                                f"{scenes_path}, so no training data may hold it; remove the line "
                                "or mark the scene `split: train`")

    pairs: list[tuple[str, str]] = []
    for e in chosen:
        if e.prompt:
            prompt = _header(e.prompt)
        elif e.scene is not None:
            if e.scene not in scene_set:
                close = difflib.get_close_matches(e.scene, list(scene_set.scenes), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "add it there or give the line a 'prompt'"
                problems.append(f"{e.source}: scene {e.scene!r} is not in {scenes_path}; {hint}")
                continue
            scene = scene_set.scenes[e.scene]
            own = e.scene == spec.scene
            prompt = scene_prompt(scene.id, scene.core, mode if own else InputMode.FRAGMENT)
        else:
            topic = topics.get(e.topic or "")
            if topic is None:
                close = difflib.get_close_matches(e.topic or "", list(topics), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "add it there or give the line a 'prompt'"
                problems.append(f"{e.source}: topic {e.topic!r} is not in {topics_path}; {hint}")
                continue
            prompt = topic_prompt(topic.description)
        pairs.append((prompt, e.text))
    if problems:
        raise TrainingDataError(problems)
    return TrainingSet(pairs=tuple(pairs), data_sha256=sha256_file(data), input_mode=mode)


def tokenize_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
                   ) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per pair: ``prompt + text + eos``, loss on text and eos only."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainingError("the base's tokenizer has no eos token; cannot mark where a text ends")
    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    texts = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    rows = []
    for prompt_ids, text_ids in zip(prompts, texts, strict=True):
        ids = (list(prompt_ids) + list(text_ids) + [eos])[:max_length]
        labels = ([-100] * len(prompt_ids) + list(text_ids) + [eos])[:max_length]
        rows.append((ids, labels))
    return rows


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad right (training), with -100 labels and a zero attention mask on the padding."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded shuffles of ``range(n)``, cut into batches (a short last one dropped)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]
