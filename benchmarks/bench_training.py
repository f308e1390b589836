"""Training figures: pipeline overhead against a plain PEFT loop, and ``train --all`` time.

    python benchmarks/bench_training.py [--steps N] [--repeats N] [--skip-all]

1. Overhead: ``training.train`` (data checks, prompt building, cache key, deterministic
   setup, atomic save with metadata) against a plain PEFT + torch loop that does the same
   work by hand: the same examples and prompts, LoRA config, optimiser, schedule, batches,
   steps, seed and thread count. Both run end to end (load the base, tokenize, train,
   save) in this process, interleaved, and the best of ``--repeats`` runs is compared.
   The two final losses are printed too: equal losses show the loops do the same work.
   Target: overhead at most 10%.
2. ``scenelora train --all --no-cache`` (the four Δ42 demo adapters) in a fresh process,
   pinned to two cores when ``taskset`` exists. Target: at most 120 s.

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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def plain_peft_loop(base_dir: Path, data: Path, scenes_file: Path, topics_file: Path,
                    out: Path, *, scene: str, role: str, steps: int, lr: float, batch_size: int,
                    seed: int, threads: int, max_length: int) -> float:
    """What a user would write by hand with PEFT and torch; returns the final loss."""
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
    config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=16, lora_dropout=0.05,
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
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.randperm(len(rows), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        batch = [rows[i] for i in chosen]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.detach().item()
    save_file({k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()},
              str(out))
    return loss_value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from pytest_scenelora.engine import training

    parser.add_argument("--steps", type=int, default=training.DEFAULT_STEPS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-all", action="store_true", help="skip timing `train --all`")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    from pytest_scenelora import shipped
    from pytest_scenelora.engine.tinybase import ensure_tiny_base

    hf_logging.disable_progress_bar()
    base_dir = ensure_tiny_base(progress=lambda line: print(line, file=sys.stderr))
    spec = training.TrainSpec(scene="Δ42", role="poetic", base="tiny", steps=args.steps, device="cpu")
    work = Path(tempfile.mkdtemp(prefix="scenelora-bench-"))
    plain_times, ours_times = [], []
    plain_loss = ours_loss = float("nan")
    try:
        for repeat in range(args.repeats):
            started = time.perf_counter()
            plain_loss = plain_peft_loop(
                base_dir, shipped.training_data_file(), shipped.scenes_file(),
                shipped.topics_file(), work / f"plain{repeat}.safetensors",
                scene=spec.scene, role=spec.role, steps=spec.steps, lr=spec.lr,
                batch_size=spec.batch_size, seed=spec.seed, threads=spec.threads,
                max_length=spec.max_length,
            )
            plain_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = training.train(spec, work / f"ours{repeat}", cache=False)
            ours_times.append(time.perf_counter() - started)
            ours_loss = result.final_loss or float("nan")
            print(f"repeat {repeat + 1}: plain {plain_times[-1]:.2f}s, "
                  f"scenelora {ours_times[-1]:.2f}s", flush=True)
        ratio = min(ours_times) / min(plain_times)
        print(f"training {spec.steps} steps (batch {spec.batch_size}, {spec.threads} threads): "
              f"plain PEFT loop {min(plain_times):.2f}s, training.train {min(ours_times):.2f}s, "
              f"overhead {100 * (ratio - 1):+.1f}% (target <= +10%)")
        print(f"final loss: plain {plain_loss:.6f}, training.train {ours_loss:.6f}")

        if not args.skip_all:
            command = [sys.executable, "-m", "pytest_scenelora.cli.main", "train", "--all", "--no-cache",
                       "--out", str(work / "library"), "--progress", "none"]
            if shutil.which("taskset"):
                command = ["taskset", "-c", "0,1", *command]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                print(done.stdout + done.stderr, file=sys.stderr)
                return done.returncode
            print(done.stdout.rstrip())
            print(f"scenelora train --all: {seconds:.1f}s on 2 cores (target <= 120s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
