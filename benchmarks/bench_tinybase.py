"""How long the tiny base takes to build, against the 2-minute budget, in a fresh home.

The build is the first thing a new user waits for (`tox -e demo`, the test session), so
its time is a figure in the README. The reference measured in the same run is the bare
training loop's cost: the same number of forward/backward steps on random tokens, so the
ratio shows what tokenizer training, data preparation and saving add.

Run: python benchmarks/bench_tinybase.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mib

BUDGET_S = 120.0


def bare_steps(steps: int) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_scenelora.engine.tinybase import RECIPE

    torch.manual_seed(0)
    torch.set_num_threads(RECIPE["threads"])
    config = LlamaConfig(**{k: RECIPE[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "max_position_embeddings")},
        tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, RECIPE["vocab_size"], (RECIPE["batch_size"], RECIPE["seq_len"]))
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    from pytest_scenelora.engine.tinybase import RECIPE, build_tiny_base

    out = Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny"
    result = build_tiny_base(out)
    bare = bare_steps(RECIPE["steps"])
    print("| measure | value | reference | ratio |")
    print("|---|---|---|---|")
    print(f"| tiny base build ({RECIPE['steps']} steps) | {result.seconds:.1f} s | budget {BUDGET_S:.0f} s "
          f"| {result.seconds / BUDGET_S:.2f} of budget |")
    print(f"| same steps, bare loop on random tokens | {bare:.1f} s | build {result.seconds:.1f} s "
          f"| build/bare {result.seconds / bare:.2f}x |")
    print(f"| final loss | {result.final_loss:.3f} | | |")
    print(f"| peak RSS | {peak_rss_mib():.0f} MiB | | |")


if __name__ == "__main__":
    main()
