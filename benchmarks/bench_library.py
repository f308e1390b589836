"""Adapter library figures (issue: foundation), as ratios measured in one run.

- switch latency: mean of 100 ``AdapterLibrary.switch`` calls, against reloading the base
  and the adapter from disk (what a script without a library does to change voice);
- mixed-batch generation: 4 adapters x 16 prompts in ONE batch, against a generate loop
  per adapter and a loop per prompt; the greedy texts must be identical;
- memory: peak RSS with 1 and with 16 adapters on the tiny base (fresh processes).

Run: python benchmarks/bench_library.py  (builds the tiny base first when needed)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mib, random_adapters, timed

PROMPTS = [f"Topic: {t}\n" for t in (
    "A busy harbour at dawn.", "A deep green forest.", "A cold winter.", "A long train journey.",
    "A kitchen before breakfast.", "A hospital ward at night.", "A mountain pass.", "A library.",
    "A crowded market.", "The night sky.", "A school yard.", "A slow river.",
    "A wedding in spring.", "A factory floor.", "A garden after rain.", "A city street.",
)]


def memory_probe(base_dir: str, adapters: list[str]) -> None:
    """Child process: load the base and the adapters, print peak RSS in MiB."""
    from pytest_scenelora.engine.bases import load_base
    from pytest_scenelora.engine.library import AdapterLibrary

    base = load_base(base_dir, device="cpu")
    library = AdapterLibrary(base)
    before = peak_rss_mib()
    for path in adapters:
        library.add(path)
    library.generate(PROMPTS[:4], library.names[:1] * 4)
    print(json.dumps({"base_only": before, "peak": peak_rss_mib(),
                      "adapter_bytes": sum(e.info.nbytes for e in library)}))


def main() -> None:
    from pytest_scenelora.engine.bases import load_base
    from pytest_scenelora.engine.generation import GenerationConfig
    from pytest_scenelora.engine.library import AdapterLibrary
    from pytest_scenelora.engine.tinybase import ensure_tiny_base

    base_dir = ensure_tiny_base(progress=lambda line: print(line, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="bench-library-"))
    paths = random_adapters(base_dir, work / "adapters", 16)

    library = AdapterLibrary(load_base(str(base_dir), device="cpu"))
    for path in paths[:4]:
        library.add(path)
    names = library.names

    switch = timed(lambda: [library.switch(names[i % 4]) for i in range(100)], repeat=5) / 100

    def reload() -> None:
        fresh = AdapterLibrary(load_base(str(base_dir), device="cpu"))
        fresh.add(paths[1])

    reload_s = timed(reload, repeat=3)

    config = GenerationConfig(max_new_tokens=32)
    rows = [(p, a) for a in names for p in PROMPTS]
    mixed_text: list[str] = []
    per_adapter_text: list[str] = []
    per_prompt_text: list[str] = []

    def mixed() -> None:
        mixed_text[:] = library.generate([p for p, _ in rows], [a for _, a in rows], config=config)

    def per_adapter() -> None:
        per_adapter_text.clear()
        for name in names:
            library.switch(name)
            per_adapter_text.extend(library.generate(PROMPTS, config=config))

    def per_prompt() -> None:
        per_prompt_text.clear()
        for name in names:
            library.switch(name)
            per_prompt_text.extend(library.generate([p], config=config)[0] for p in PROMPTS)

    mixed_s = timed(mixed, repeat=3)
    per_adapter_s = timed(per_adapter, repeat=3)
    per_prompt_s = timed(per_prompt, repeat=1)
    same_text = mixed_text == per_adapter_text == per_prompt_text

    probes = {}
    for count in (1, 16):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-probe", str(base_dir), *map(str, paths[:count])],
            capture_output=True, text=True, check=True,
        )
        probes[count] = json.loads(out.stdout.strip().splitlines()[-1])

    print("| measure | value | reference | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| switch (mean of 100) | {switch * 1e3:.3f} ms | reload base+adapter {reload_s * 1e3:.0f} ms "
          f"| {reload_s / switch:,.0f}x cheaper | <= 1 ms, >= 20x |")
    print(f"| 4 adapters x 16 prompts, one mixed batch | {mixed_s:.2f} s | loop per adapter "
          f"{per_adapter_s:.2f} s | {per_adapter_s / mixed_s:.2f}x faster | >= 2x |")
    print(f"| same, against a loop per prompt | {mixed_s:.2f} s | {per_prompt_s:.2f} s "
          f"| {per_prompt_s / mixed_s:.2f}x faster | |")
    print(f"| same greedy text in all three | {same_text} | | | True |")
    one, many = probes[1], probes[16]
    print(f"| peak RSS, 1 adapter | {one['peak']:.0f} MiB | base alone {one['base_only']:.0f} MiB | | |")
    print(f"| peak RSS, 16 adapters | {many['peak']:.0f} MiB | 1 adapter {one['peak']:.0f} MiB "
          f"| {many['peak'] / one['peak']:.3f}x | base once + "
          f"{(many['adapter_bytes'] - one['adapter_bytes']) / 2**20:.1f} MiB of adapters |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-probe":
        memory_probe(sys.argv[2], sys.argv[3:])
    else:
        main()
