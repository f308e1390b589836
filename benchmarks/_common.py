"""Shared set-up for the benchmark scripts: a tiny base and random LoRA adapters."""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROLES = ("logic", "poetic", "body", "silence")


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB, since it was started.

    On Linux, ``VmHWM`` of ``/proc/self/status``: the high-water mark of this program's own
    memory. ``getrusage``'s ``ru_maxrss`` is not: a child started from a large process
    (a benchmark that has loaded torch and a base) keeps the parent's peak across
    ``fork`` and ``exec``, which hid every child's own figure under the parent's.
    """
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Median wall seconds of *repeat* calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_adapters(base_dir: Path, out: Path, count: int, r: int = 16) -> list[Path]:
    """*count* adapters with random factors (targets v_proj, o_proj), named like a library."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from pytest_scenelora.engine.adapters import save_adapter_file
    from pytest_scenelora.engine.bases import fingerprint

    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(base_dir)
    paths = []
    for i in range(count):
        name = f"Δ{42 + i // len(ROLES)}_{ROLES[i % len(ROLES)]}"
        path = out / f"{name}.safetensors"
        if not path.exists():
            torch.manual_seed(i)
            model = get_peft_model(
                AutoModelForCausalLM.from_pretrained(base_dir),
                LoraConfig(r=r, lora_alpha=16, target_modules=["v_proj", "o_proj"],
                           init_lora_weights=False, task_type="CAUSAL_LM"),
            )
            state = {k: v * 20 if "lora_B" in k else v
                     for k, v in get_peft_model_state_dict(model).items()}
            save_adapter_file(path, state, model.peft_config["default"], scene=name.split("_")[0],
                              role=name.split("_")[1], base_model="tiny", base_fingerprint=fp)
        paths.append(path)
    return paths
