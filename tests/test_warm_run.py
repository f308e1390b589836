"""A warm run answers from the cache alone: no base, no PEFT, no embedder is loaded.

The harness is meant to be re-run on every adapter change; what did not change must
cost nothing, so a re-run with everything cached must not even import transformers,
peft or sentence-transformers (loading them is most of a small run's time). The logits
that ``adapter_active`` and ``merge_equivalence`` compare are cached too.
"""

from __future__ import annotations

import json
import re

SUITE = """\
adapters: "Δ42_*"
generation:
  max_new_tokens: 8
checks:
  - kind: adapter_active
    probes: 2
    threshold: 0.005
  - kind: scene_holds
    samples: 2
    threshold: -1.0
  - kind: merge_equivalence
    probes: 2
    threshold: 0.001
"""

SPY = """\
import json, sys

def pytest_sessionfinish(session):
    loaded = {m: m in sys.modules for m in ("transformers", "peft", "sentence_transformers")}
    with open("loaded.json", "w") as fh:
        json.dump(loaded, fh)
"""


def test_a_warm_run_loads_no_model_and_gives_the_same_verdicts(pytester, make_adapter, tiny_base_dir,
                                                                 tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCENELORA_HOME", str(tmp_path / "home"))
    pytester.makefile(".yaml", small=SUITE)
    pytester.makepyfile(spy=SPY)
    adapter = make_adapter("Δ42_poetic", seed=3)
    args = ["small.yaml", "--adapter", str(adapter), "--base-model", str(tiny_base_dir), "-p", "spy",
            "-p", "no:cacheprovider", "-rA"]
    runs = []
    documents = []
    for _ in ("cold", "warm"):
        result = pytester.runpytest_subprocess(*args, "--junitxml=out.xml", "--scenelora-json=out.json")
        assert result.ret in (0, 1), result.stdout.str()
        loaded = json.loads((pytester.path / "loaded.json").read_text())
        outcomes = re.findall(r"^(PASSED|FAILED) \S+::(\S+)", result.stdout.str(), re.M)
        runs.append((loaded, sorted(outcomes), (pytester.path / "out.xml").read_text()))
        documents.append(json.loads((pytester.path / "out.json").read_text(encoding="utf-8")))
    (cold_loaded, cold_outcomes, cold_xml), (warm_loaded, warm_outcomes, warm_xml) = runs
    # the results document knows the base and the adapter as well without loading either
    cold_doc, warm_doc = documents
    assert warm_doc["base"] == cold_doc["base"] and warm_doc["base"]["fingerprint"]
    assert warm_doc["adapters"] == cold_doc["adapters"]
    assert warm_doc["adapters"]["Δ42_poetic"]["content_hash"]
    assert cold_loaded == {"transformers": True, "peft": True, "sentence_transformers": True}
    assert warm_loaded == {"transformers": False, "peft": False, "sentence_transformers": False}
    assert warm_outcomes == cold_outcomes and len(cold_outcomes) == 3
    verdicts = [re.findall(r'name="scenelora_verdict" value="([^"]*)"', xml) for xml in (cold_xml, warm_xml)]
    assert verdicts[0] and verdicts[0] == verdicts[1]
