"""The embedded tiny base: a small Llama-architecture model built locally, offline.

It is pretrained from scratch on the corpus shipped in ``fixtures/corpus`` with a
byte-level BPE tokenizer trained on the same text. The build is deterministic (fixed
seeds, fixed thread count, deterministic kernels), so two builds give the same bytes,
and it is cached under ``<cache home>/bases/tiny-<hash>`` where the hash covers the
corpus bytes and the recipe: it is rebuilt only when either changes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import shipped
from ..fsutil import atomic_dir, cache_home, canonical_json, file_lock, hash_files, sha256_bytes
from .threads import fixed_team_size

#: Everything that shapes the built weights. Change any value and the cache key changes.
RECIPE: dict[str, Any] = {
    "recipe_version": 3,
    "vocab_size": 4096,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    # every training window starts at a document's first token, so each one holds a
    # header ("Scene: ..." / "Topic: ...") and the text that follows it: that is what
    # teaches the base to copy a scene's words from its header (at 150 steps of windows
    # cut anywhere it copied none; at 300 document windows it copies most figures and
    # half the objects; at 400 it copies both)
    "seq_len": 64,
    "batch_size": 32,
    "steps": 400,
    "lr": 3e-3,
    "warmup_steps": 15,
    "weight_decay": 0.05,
    "seed": 1234,
    "threads": 2,
    # the loss, averaged over the last CONVERGENCE_WINDOW steps, that a build must reach
    # to be saved (this recipe settles near 0.8; it is still above 5 after 20 steps)
    "converged_loss": 1.5,
}

#: How many final steps' losses a build's convergence is judged on (RECIPE "converged_loss").
CONVERGENCE_WINDOW = 10

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}


@dataclass(frozen=True)
class BuildResult:
    path: Path
    seconds: float
    final_loss: float
    tokens_seen: int
    settled_loss: float = math.nan
    attempt: int = 1


def build_key(corpus: list[Path] | None = None, recipe: dict[str, Any] | None = None) -> str:
    corpus = corpus if corpus is not None else shipped.corpus_files()
    root = corpus[0].parent if corpus else Path()
    return sha256_bytes(hash_files(corpus, root), canonical_json(recipe or RECIPE))


def tiny_base_dir(home: Path | None = None) -> Path:
    """Where the tiny base for the current corpus and recipe lives (built or not)."""
    return (home or cache_home()) / "bases" / f"tiny-{build_key()[:16]}"


def ensure_tiny_base(home: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """The tiny base's directory, building it first when it is not in the cache.

    Two processes asking at once (pytest-xdist workers) build it once: the second
    waits on a file lock and then finds the finished directory.
    """
    target = tiny_base_dir(home)
    if (target / "config.json").is_file():
        return target
    with file_lock(target):
        if not (target / "config.json").is_file():
            with atomic_dir(target) as tmp:
                result = build_tiny_base(tmp, progress=progress)
            (target.parent / f"{target.name}.build.log").write_text(
                f"built in {result.seconds:.1f}s, final loss {result.final_loss:.3f}, "
                f"{result.tokens_seen} tokens, attempt {result.attempt}\n",
                encoding="utf-8",
            )
    return target


def read_documents(files: list[Path]) -> list[str]:
    """Documents are separated by blank lines: a header line, then a paragraph."""
    docs: list[str] = []
    for path in files:
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        docs.extend(block.strip() for block in text.split("\n\n") if block.strip())
    return docs


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    import torch

    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_dtype = torch.get_default_dtype()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)  # whatever the caller's process left it at
    try:
        with fixed_team_size():  # the team is *threads* threads however loaded the machine is
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det)
        torch.set_default_dtype(previous_dtype)


def train_tokenizer(docs: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) trained on *docs*, as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS["pad"], SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    bos_id = tok.token_to_id(SPECIAL_TOKENS["bos"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS['bos']} $A", special_tokens=[(SPECIAL_TOKENS["bos"], bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        model_max_length=RECIPE["max_position_embeddings"],
    )


def build_tiny_base(
    out_dir: Path,
    corpus: list[Path] | None = None,
    recipe: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Train tokenizer and model from scratch and save them to *out_dir* (HF format).

    A run whose loss has not come down (the recipe's ``converged_loss``, averaged over its
    last steps) is not saved: the model is retrained once at half the learning rate with twice
    the warm-up, and if that fails too the build stops with :class:`BaseModelError`. Both
    attempts are deterministic, so a machine always builds the same bytes; the attempt
    and the loss curve are recorded in ``scenelora_build.json``.
    """
    import torch

    from .quiet import quiet_transformers

    quiet_transformers()
    recipe = {**RECIPE, **(recipe or {})}
    corpus = corpus if corpus is not None else shipped.corpus_files()
    start = time.perf_counter()
    docs = read_documents(corpus)
    if not docs:
        raise ValueError(f"the tiny base corpus is empty: {[str(p) for p in corpus]}")

    with _deterministic_torch(recipe["threads"]):
        tokenizer = train_tokenizer(docs, recipe["vocab_size"])
        stream: list[int] = []
        starts: list[int] = []
        for ids in tokenizer(docs)["input_ids"]:
            starts.append(len(stream))
            stream.extend(ids)
            stream.append(tokenizer.eos_token_id)
        data = torch.tensor(stream, dtype=torch.long)
        attempt, lr, warmup = 1, recipe["lr"], recipe["warmup_steps"]
        while True:
            model, curve = _pretrain(tokenizer, data, starts, recipe, lr=lr, warmup=warmup,
                                     progress=progress)
            tail = curve[-CONVERGENCE_WINDOW:]
            settled = sum(tail) / len(tail)
            goal = recipe["converged_loss"]
            if settled <= goal:
                break
            if attempt == 2:
                from ..errors import BaseModelError

                raise BaseModelError(
                    f"the tiny base did not learn its corpus on this machine: the loss settled at "
                    f"{settled:.2f} (needs <= {goal}) even at lr {lr:g}; please report it with "
                    "the output of `python -c 'import torch; print(torch.__config__.show())'`")
            if progress:
                progress(f"tiny base: loss settled at {settled:.2f} (> {goal}) at lr {lr:g}; "
                         "retraining at half the learning rate")
            attempt, lr, warmup = 2, lr / 2, 2 * warmup

        model.eval()
        model.generation_config.do_sample = False
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        (Path(out_dir) / "scenelora_build.json").write_text(
            canonical_json({"recipe": recipe, "corpus_key": build_key(corpus, recipe),
                            "attempt": attempt, "lr": lr, "final_loss": round(curve[-1], 6),
                            "settled_loss": round(settled, 6),
                            "loss_every_10_steps": [round(x, 3) for x in curve[::10]]}) + "\n",
            encoding="utf-8",
        )
    return BuildResult(
        path=Path(out_dir),
        seconds=time.perf_counter() - start,
        final_loss=curve[-1],
        tokens_seen=attempt * recipe["steps"] * recipe["batch_size"] * recipe["seq_len"],
        settled_loss=settled,
        attempt=attempt,
    )


def _pretrain(tokenizer: Any, data: Any, doc_starts: list[int], recipe: dict[str, Any], *,
              lr: float, warmup: int,
              progress: Callable[[str], None] | None) -> tuple[Any, list[float]]:
    """One pretraining run from the seeded initialisation: (model, loss of every step).

    Each window of ``seq_len`` tokens starts where a document starts (running on into the
    next document when it is shorter); documents are visited in a fresh seeded order
    each epoch.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    seq = recipe["seq_len"]
    torch.manual_seed(recipe["seed"])
    config = LlamaConfig(
        vocab_size=recipe["vocab_size"],
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_key_value_heads"],
        max_position_embeddings=recipe["max_position_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    steps = recipe["steps"]

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    gen = torch.Generator().manual_seed(recipe["seed"])
    curve: list[float] = []
    starts = torch.tensor([s for s in doc_starts if s + seq <= len(data)] or [0], dtype=torch.long)
    order = torch.empty(0, dtype=torch.long)
    cursor = 0
    for step in range(steps):
        if cursor + recipe["batch_size"] > len(order):
            order = starts[torch.randperm(len(starts), generator=gen)]
            cursor = 0
        batch_starts = order[cursor : cursor + recipe["batch_size"]]
        cursor += recipe["batch_size"]
        batch = torch.stack([data[s : s + seq] for s in batch_starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append(float(loss.detach()))
        if progress and (step % 10 == 0 or step == steps - 1):
            progress(f"tiny base: step {step + 1}/{steps} loss {curve[-1]:.3f}")
    return model, curve
