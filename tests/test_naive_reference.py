"""The benchmark's plain transformers + PEFT reference computes what scenelora computes.

``benchmarks/naive_peft.py`` is what scenelora's speed is measured against, so the
comparison is honest only if it does the same work: on a small suite (every check kind,
few samples, a cut-down register file) and two adapters, its sampled texts are
scenelora's, row for row, and its scores and intervals agree to 1e-5.

It generates each sample alone; scenelora in mixed batches. Their logits differ by float
rounding (how much depends on the CPU's vector units: AVX-512 kernels split a batched
matrix product differently from a one-row one), so a sample may come out differently at
a near-tie: the texts must then part exactly where the reference's pick was within
rounding of another (``near_ties.py``), and only that adapter's text checks are exempt
from the score comparison. Everything else is held exactly as before.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from near_ties import assert_same_samples

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"

SUITE = """\
suite: small reference case
adapters: "Δ42_*"
registers: registers.yaml
generation:
  max_new_tokens: 12
checks:
  - kind: adapter_active
    probes: 3
    threshold: 0.005
  - kind: scene_holds
    samples: 3
    threshold: 0.03
  - kind: registers_unpack
    samples: 3
    threshold: 0.1
  - kind: style_survives_topic_shift
    topics: [harbour, forest]
    samples: 2
    threshold: 0.6
  - kind: unseen_scenes
    examples: 2
    samples: 2
    threshold: 0.5
  - kind: merge_equivalence
    probes: 2
    threshold: 0.001
"""


def _small_registers(dst: Path, per_register: int = 3) -> None:
    import yaml

    from pytest_scenelora import shipped

    data = yaml.safe_load(shipped.registers_file().read_text(encoding="utf-8"))
    for register in data["registers"]:
        register["references"] = register["references"][:per_register]
    dst.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


@pytest.fixture
def naive_peft(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import naive_peft

    yield naive_peft
    sys.modules.pop("naive_peft", None)


def test_naive_reference_gives_scenelora_texts_and_scores(naive_peft, tiny_base_dir, make_adapter,
                                                          tmp_path, monkeypatch) -> None:
    from pytest_scenelora.checks.runner import Request
    from pytest_scenelora.session import SceneSession
    from pytest_scenelora.settings import Settings
    from pytest_scenelora.suite import load_suite

    monkeypatch.setenv("CI", "1")  # Hypothesis derandomized, no example database: same draws
    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))  # an empty result cache
    _small_registers(tmp_path / "registers.yaml")
    suite_path = tmp_path / "small.yaml"
    suite_path.write_text(SUITE, encoding="utf-8")
    adapters = [make_adapter(f"Δ42_{role}", seed=seed + 20) for seed, role in enumerate(["logic", "poetic"])]

    session = SceneSession(Settings(adapters=tuple(map(str, adapters)), base_model=str(tiny_base_dir),
                                    device="cpu", seed=0))
    suite = load_suite(suite_path)
    ours = {(spec.name, name): session.runner.run(suite, spec, name)
            for name in session.adapter_names for spec in suite.checks}


    import torch

    threads = torch.get_num_threads()
    try:  # one thread: the reference is slow enough without OpenMP waiting on a busy machine
        naive = naive_peft.run_naive([suite_path], adapters, base=str(tiny_base_dir), seed=0, threads=1,
                                     trace=True)
    finally:
        torch.set_num_threads(threads)
    assert naive.stats.base_loads == len(adapters)
    assert naive.texts, "the naive run generated nothing"
    config = session.runner.generation_config(suite)
    keys = list(naive.texts)
    texts = [session.runner.texts([Request(row_adapter, prompt, i + 1)], config)[0][-1]
             for _, row_adapter, prompt, i in keys]
    apart = assert_same_samples(texts, [naive.texts[k] for k in keys], [naive.traces[k] for k in keys],
                                session.runner.library.base.tokenizer, labels=keys)
    # a sample of the base alone is in every adapter's scene check
    exempt = {keys[row][0] if keys[row][1] else "*" for row in apart}
    assert set(naive.verdicts) == set(ours)
    for (check, adapter), verdict in ours.items():
        kind = next(spec.kind for spec in suite.checks if spec.name == check)
        if kind not in ("adapter_active", "merge_equivalence") and exempt & {adapter, "*"}:
            continue
        other = naive.verdicts[check, adapter]
        assert other.status == verdict.status, (check, adapter)
        for field in ("score", "ci_low", "ci_high"):
            # float32 logits and embeddings: a KL of 3.8 nats agrees to ~4e-7 relative
            assert getattr(other, field) == pytest.approx(getattr(verdict, field), rel=1e-5, abs=1e-5,
                                                          nan_ok=True), (check, adapter, field)
