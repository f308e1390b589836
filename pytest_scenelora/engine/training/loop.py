"""The training loop: deterministic kernels and threads, LoRA placed by plan, AdamW with
warmup and cosine decay, progress reported per step."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...errors import TrainingError
from ...prompts import InputMode
from .. import adapters as adapter_files
from ..bases import Quantization
from ..progress import Progress
from ..quiet import peft_wrapping_quietly
from ..threads import fixed_team_size
from .data import TrainingSet, batches, collate, tokenize_pairs
from .loss import causal_lm_loss
from .spec import TrainSpec
from .targets import (
    WHY_NOT_EMBEDDINGS,
    TargetPlan,
    TargetPreset,
    embedding_module_names,
    linear_leaf_names,
    matches,
    target_modules_for,
)


@contextlib.contextmanager
def deterministic_torch(threads: int, device: str) -> Iterator[None]:
    """Deterministic kernels and a fixed team of *threads* threads inside the block; restored after.

    ``torch.set_num_threads`` sets the most threads, not the number used: with OpenMP's
    dynamic adjustment on (``OMP_DYNAMIC=true``; libgomp then sizes each team from the
    system's load average) or MKL's (``MKL_DYNAMIC``, on unless set false), a loaded
    machine runs some kernels on fewer threads. Reductions are then split differently
    and the weights come out different in the last bits while the loss agrees to many
    decimals; reproduced here with ``OMP_DYNAMIC=true`` under load. Both adjustments are
    switched off for the block, as Intel's conditions for run-to-run reproducibility ask.
    """
    import torch

    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device == "cuda":
        # cuBLAS needs this to be deterministic; it only takes effect before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device == "cuda")
    try:
        with fixed_team_size():
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)


def resolve_targets(spec: TrainSpec, model: Any, mode: InputMode) -> TargetPlan:
    from transformers.pytorch_utils import Conv1D

    if spec.target_modules:
        targets = list(spec.target_modules)
    else:
        preset = spec.preset or (TargetPreset.HYPERTOKEN if mode is InputMode.TOKEN
                                 else TargetPreset.FRAGMENT)
        targets = target_modules_for(preset, model)
    names = [name for name, _ in model.named_modules()]
    embedding_names = embedding_module_names(model)
    for target in targets:
        hits = [n for n in names if matches(n, target)]
        if not hits:
            leaves = ", ".join(linear_leaf_names(model))
            raise TrainingError(
                f"target module {target!r} is not in base {spec.base!r} "
                f"({getattr(model.config, 'model_type', '?')}); its linear layers are: {leaves}"
            )
        if not spec.allow_embedding_training and any(h in embedding_names for h in hits):
            raise TrainingError(
                f"target module {target!r} is the base's embedding or LM head: {WHY_NOT_EMBEDDINGS}; "
                "target attention projections instead (--preset hypertoken), or pass "
                "--allow-embedding-training if you mean it"
            )
    for target in spec.modules_to_save:
        hits = [n for n in names if matches(n, target)]
        if not hits:
            raise TrainingError(f"modules_to_save entry {target!r} is not a module of base {spec.base!r}")
        if not spec.allow_embedding_training and any(h in embedding_names for h in hits):
            raise TrainingError(
                f"modules_to_save entry {target!r} is the base's embedding or LM head: "
                f"{WHY_NOT_EMBEDDINGS}; pass --allow-embedding-training if you mean it"
            )
    fused = any(
        isinstance(module, Conv1D) and any(matches(name, t) for t in targets)
        for name, module in model.named_modules()
    )
    return TargetPlan(target_modules=tuple(targets), fan_in_fan_out=fused)



def lora_config(spec: TrainSpec, plan: TargetPlan) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(plan.target_modules),
        modules_to_save=list(spec.modules_to_save) or None,
        fan_in_fan_out=plan.fan_in_fan_out,
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        bias="none",
    )


@contextlib.contextmanager
def hf_progress_bars_off() -> Iterator[None]:
    """No "Loading weights" bar from transformers: training reports its own progress."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass
class Trained:
    tensors: dict[str, Any]
    config: dict[str, Any]
    final_loss: float
    steps: int


def run_training(spec: TrainSpec, training_set: TrainingSet, base: Any,
                  progress: Progress | None) -> Trained:
    import torch
    from peft import get_peft_model, get_peft_model_state_dict, prepare_model_for_kbit_training

    model, tokenizer = base.model, base.tokenizer
    plan = resolve_targets(spec, model, training_set.input_mode)
    if spec.quantize is not Quantization.NONE:
        model.config.use_cache = False  # gradient checkpointing cannot use the KV cache
        # QLoRA: norms to fp32, input grads on, gradient checkpointing to save memory.
        with peft_wrapping_quietly():
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=True,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
    torch.manual_seed(spec.seed)  # LoRA A init and dropout masks
    with peft_wrapping_quietly():
        peft_model = get_peft_model(model, lora_config(spec, plan))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    warmup = max(1, min(20, spec.steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, spec.steps, warmup)
    )
    rows = tokenize_pairs(tokenizer, training_set.pairs, spec.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(p for p in peft_model.parameters()).device
    order = batches(len(rows), spec.batch_size, spec.seed)
    loss_value = float("nan")
    if progress:
        progress(spec.name, 0, spec.steps)
    try:
        for step in range(1, spec.steps + 1):
            batch = collate([rows[i] for i in next(order)], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = causal_lm_loss(peft_model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.detach().item()
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"{spec.name}: the loss became {loss_value} at step {step}; "
                    f"the training diverged: lower the learning rate (lr={spec.lr})"
                )
            if progress:
                progress(f"{spec.name} loss {loss_value:.4f}", step, spec.steps)
    finally:
        if progress:
            progress(spec.name, spec.steps, spec.steps)  # done, or stopped: the bar goes
    peft_model.eval()
    tensors = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    config = adapter_files.config_to_dict(peft_model.peft_config["default"])
    config["base_model_name_or_path"] = spec.base
    config["inference_mode"] = True
    return Trained(tensors=tensors, config=config, final_loss=loss_value, steps=spec.steps)


def cpu_kernels() -> str:
    """Which vectorised CPU code torch runs (``AVX512``, ``AVX2``, ``DEFAULT``...): results
    differ in the last bits between them, so an adapter says which one made it."""
    import torch

    with contextlib.suppress(AttributeError, RuntimeError):
        return str(torch.backends.cpu.get_cpu_capability())
    return "unknown"
