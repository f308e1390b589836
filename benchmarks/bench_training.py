"""Training figures: pipeline overhead against a plain PEFT loop, and ``train --all`` time.

    python benchmarks/bench_training.py [--base NAME] [--steps N] [--repeats N] [--skip-all] [--breakdown]

1. Overhead: ``training.train`` (data checks, prompt building, cache key, deterministic
   setup, atomic save with metadata) against a plain PEFT + torch loop that does the same
   work by hand: the same examples and prompts, LoRA config, optimiser, schedule, batches,
   steps, seed and thread count. Each side runs end to end (load the base, tokenize, train,
   save; torch, transformers and PEFT are imported first, untimed) in a fresh child process,
   so that its peak RSS is its own; the two alternate, and
   the best of ``--repeats`` runs is compared. Tokens per second count every token the
   batches hold (padding excluded); the two final losses are printed too: equal losses show
   the loops do the same work. Target: overhead at most 10%. ``--base smollm2-135m`` runs it
   on the real base with the preset's recipe (``--steps`` and the rest follow the base).
2. ``scenelora train --all --no-cache`` (the four Δ42 demo adapters, on ``--base``) in a
   fresh process, pinned to two cores when ``taskset`` exists. Target on the tiny base: at
   most 120 s.
3. ``--breakdown`` (instead of 1 and 2): where one step's time goes, in this process: the
   layers, the LM head and loss (over the labelled positions, and over every position for
   comparison), the optimizer.

Ratios are taken within one run, so a slower or busier machine shifts both sides alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def plain_peft_loop(base_dir: Path, data: Path, scenes_file: Path, topics_file: Path,
                    out: Path, *, scene: str, role: str, steps: int, lr: float, batch_size: int,
                    seed: int, threads: int, max_length: int, r: int = 16, alpha: float = 16,
                    dropout: float = 0.05) -> tuple[float, int]:
    """What a user would write by hand with PEFT and torch; returns the final loss and the
    tokens its batches held (padding excluded)."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    scenes = {s["id"]: s for s in yaml.safe_load(scenes_file.read_text(encoding="utf-8"))["scenes"]}
    topics = {t["id"]: t for t in yaml.safe_load(topics_file.read_text(encoding="utf-8"))["topics"]}
    pairs = []
    for line in data.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        ex = json.loads(line)
        if ex["role"] != role:
            continue
        if ex.get("prompt"):
            prompt = ex["prompt"] if ex["prompt"].endswith(("\n", " ")) else ex["prompt"] + "\n"
        elif "scene" in ex:
            s = scenes[ex["scene"]]
            prompt = f"Scene: {scene}\n" if ex["scene"] == scene else f"Scene: {s['core'].strip()}\n"
        else:
            prompt = f"Topic: {topics[ex['topic']]['description'].strip()}\n"
        pairs.append((prompt, ex["text"].strip()))

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    eos = tokenizer.eos_token_id
    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    texts = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    rows = [((p + t + [eos])[:max_length], ([-100] * len(p) + t + [eos])[:max_length])
            for p, t in zip(prompts, texts, strict=True)]

    torch.manual_seed(seed)
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=["v_proj", "o_proj"])
    peft_model = get_peft_model(model, config)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, min(20, steps // 10))

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        frac = (s - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    loss_value = float("nan")
    tokens = 0
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.randperm(len(rows), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        batch = [rows[i] for i in chosen]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        tokens += int(mask.sum())
        loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.detach().item()
    save_file({k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()},
              str(out))
    return loss_value, tokens


def spec_for(base: str, steps: int | None):
    from pytest_scenelora.engine import training

    return training.TrainSpec(scene="Δ42", role="poetic", base=base, steps=steps, device="cpu")


def run_side(side: str, base: str, steps: int | None, out: Path) -> dict:
    """One side, end to end, in this (fresh) process: what the parent compares."""
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    from pytest_scenelora import shipped
    from pytest_scenelora.engine import training
    from pytest_scenelora.engine.bases import resolve_base

    hf_logging.disable_progress_bar()
    import peft  # noqa: F401  both sides use the same stack: its import (~5 s) is not timed
    import torch  # noqa: F401
    import transformers  # noqa: F401

    spec = spec_for(base, steps)
    started = time.perf_counter()
    if side == "plain":
        loss, tokens = plain_peft_loop(
            resolve_base(base), shipped.training_data_file(), shipped.scenes_file(), shipped.topics_file(),
            out / "plain.safetensors", scene=spec.scene, role=spec.role, steps=spec.steps, lr=spec.lr,
            batch_size=spec.batch_size, seed=spec.seed, threads=spec.threads, max_length=spec.max_length,
            r=spec.r, alpha=spec.alpha, dropout=spec.dropout)
    else:
        trained = training.train(spec, out / "ours", cache=False)
        loss, tokens = trained.final_loss or float("nan"), None  # the parent counts the plain side's
    return {"seconds": time.perf_counter() - started, "loss": loss, "tokens": tokens,
            "peak_rss_mib": peak_rss_mib()}


def step_breakdown(base: str, steps: int) -> None:
    """Where one training step's time goes, on *base* with its recipe's batch, LoRA and
    threads: each part timed alone on the same batch, in rounds of every part, the best of
    *steps* rounds. ``head`` is the LM head and the loss (forward and backward) over every
    position (what ``model(**batch).loss`` projects) against the labelled positions only
    (what ``training.train`` projects); ``body`` is a whole step with the labelled-only loss
    less that head; ``optimizer`` is gradient clipping, AdamW and zeroing the gradients."""
    import torch
    import torch.nn.functional as F
    from peft import get_peft_model

    from pytest_scenelora.engine import training
    from pytest_scenelora.engine.bases import load_base
    from pytest_scenelora.engine.quiet import peft_wrapping_quietly
    from pytest_scenelora.engine.training.data import batches, collate, tokenize_pairs
    from pytest_scenelora.engine.training.loop import deterministic_torch, lora_config, resolve_targets
    from pytest_scenelora.engine.training.loss import causal_lm_loss

    spec = spec_for(base, None)
    training_set = training.build_training_set(spec)
    loaded = load_base(spec.base, device="cpu")
    rows = tokenize_pairs(loaded.tokenizer, training_set.pairs, spec.max_length)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = collate([rows[i] for i in next(batches(len(rows), spec.batch_size, spec.seed))], pad_id)
    plan = resolve_targets(spec, loaded.model, training_set.input_mode)
    with peft_wrapping_quietly():
        model = get_peft_model(loaded.model, lora_config(spec, plan))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    head = model.get_output_embeddings()
    targets = batch["labels"][:, 1:]
    labelled = targets != -100
    width = head.in_features
    everywhere = torch.randn(*batch["input_ids"].shape, width)
    only = torch.randn(int(labelled.sum()), width)

    def head_over(hidden, wanted) -> None:
        hidden = hidden.clone().requires_grad_()
        logits = head(hidden).float()
        logits = logits.reshape(-1, logits.shape[-1])
        F.cross_entropy(logits, wanted.reshape(-1), ignore_index=-100).backward()

    def whole(loss_of) -> None:
        loss_of(model, batch).backward()
        optimizer.zero_grad(set_to_none=True)

    def optimizer_step() -> None:
        for p in params:
            p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    full_targets = F.pad(targets, (0, 1), value=-100)
    parts = {
        "head_all": lambda: head_over(everywhere, full_targets),
        "head_only": lambda: head_over(only, targets[labelled]),
        "step_all": lambda: whole(lambda m, b: m(**b).loss),
        "step_only": lambda: whole(causal_lm_loss),
        "opt": optimizer_step,
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    with deterministic_torch(spec.threads, "cpu"):
        for _ in range(steps + 1):  # rounds of every part, so that the machine's load falls on all
            for name, work in parts.items():
                started = time.perf_counter()
                work()
                times[name].append(time.perf_counter() - started)
    head_all, head_only, step_all, step_only, opt = (min(t[1:]) for t in times.values())  # 1st: warm-up
    positions, n = batch["input_ids"].numel(), int(labelled.sum())
    body = step_only - head_only
    total = step_only + opt
    print(f"base {base}: one step of {spec.batch_size} rows x {batch['input_ids'].shape[1]} positions, "
          f"{n} of {positions} positions labelled ({100 * n / positions:.0f}%), vocabulary "
          f"{head.out_features:,}, {spec.threads} threads; best of {steps}")
    print(f"  body (layers with LoRA, forward + backward)    {1000 * body:8.1f} ms  "
          f"{100 * body / total:4.0f}%")
    print(f"  LM head + loss, labelled positions only        {1000 * head_only:8.1f} ms  "
          f"{100 * head_only / total:4.0f}%   (every position: {1000 * head_all:.1f} ms)")
    print(f"  clip + AdamW + zero_grad                       {1000 * opt:8.1f} ms  {100 * opt / total:4.0f}%")
    print(f"  step, labelled positions only: {1000 * (step_only + opt):.1f} ms; every position: "
          f"{1000 * (step_all + opt):.1f} ms ({100 * (step_all / step_only - 1):+.1f}%)")


def side_in_child(side: str, base: str, steps: int | None, work: Path) -> dict:
    result = work / f"{side}.json"
    command = [sys.executable, __file__, "--side", side, "--base", base, "--result", str(result)]
    if steps is not None:
        command += ["--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {side} side failed:\n{done.stdout}{done.stderr}")
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny", help="tiny (default) or a preset such as smollm2-135m")
    parser.add_argument("--steps", type=int, default=None, help="default: the base's recipe")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-all", action="store_true", help="skip timing `train --all`")
    parser.add_argument("--breakdown", action="store_true",
                        help="only where one step's time goes (body, LM head, optimizer)")
    parser.add_argument("--side", choices=("plain", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side:  # a child: one side, its figures to --result
        with tempfile.TemporaryDirectory(prefix="scenelora-bench-") as out:
            figures = run_side(args.side, args.base, args.steps, Path(out))
        args.result.write_text(json.dumps(figures))
        return 0

    from pytest_scenelora.engine.bases import resolve_base
    from pytest_scenelora.engine.tinybase import ensure_tiny_base

    if args.base == "tiny":
        ensure_tiny_base(progress=lambda line: print(line, file=sys.stderr))
    else:
        resolve_base(args.base)  # converted once (a GGUF preset), before anything is timed
    if args.breakdown:
        step_breakdown(args.base, steps=10)
        return 0
    spec = spec_for(args.base, args.steps)
    work = Path(tempfile.mkdtemp(prefix="scenelora-bench-"))
    runs: dict[str, list[dict]] = {"plain": [], "ours": []}
    try:
        for repeat in range(args.repeats):
            for side in ("plain", "ours"):
                runs[side].append(side_in_child(side, args.base, args.steps, work))
            print(f"repeat {repeat + 1}: plain {runs['plain'][-1]['seconds']:.2f}s, "
                  f"scenelora {runs['ours'][-1]['seconds']:.2f}s", flush=True)
        plain = min(runs["plain"], key=lambda r: r["seconds"])
        ours = min(runs["ours"], key=lambda r: r["seconds"])
        tokens = plain["tokens"]  # the same batches on both sides (the same final loss says so)
        ratio = ours["seconds"] / plain["seconds"]
        print(f"base {args.base}: {spec.steps} steps of {spec.batch_size} rows (lr {spec.lr:g}, r {spec.r}, "
              f"{spec.threads} threads), {tokens} tokens")
        print(f"plain PEFT loop: {plain['seconds']:.2f}s, {tokens / plain['seconds']:.0f} tokens/s, "
              f"peak RSS {plain['peak_rss_mib']:.0f} MiB, final loss {plain['loss']:.6f}")
        print(f"training.train:  {ours['seconds']:.2f}s, {tokens / ours['seconds']:.0f} tokens/s, "
              f"peak RSS {ours['peak_rss_mib']:.0f} MiB, final loss {ours['loss']:.6f}")
        print(f"overhead {100 * (ratio - 1):+.1f}% (target <= +10%)")

        if not args.skip_all:
            command = [sys.executable, "-m", "pytest_scenelora.cli.main", "train", "--all", "--no-cache",
                       "--base-model", args.base, "--out", str(work / "library"), "--progress", "none"]
            if shutil.which("taskset"):
                command = ["taskset", "-c", "0,1", *command]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                print(done.stdout + done.stderr, file=sys.stderr)
                return done.returncode
            print(done.stdout.rstrip())
            target = " (target <= 120s)" if args.base == "tiny" else ""
            print(f"scenelora train --all on {args.base}: {seconds:.1f}s on 2 cores{target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
