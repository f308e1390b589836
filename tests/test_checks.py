"""The checks and their verdicts: each passes on good input, fails on the sabotage it is
meant to catch, and goes inconclusive on too few noisy samples.

Most tests use synthetic vectors with a known geometry (a large shared component, plus
scene, register and topic directions), so what each check sees is exact. The last
section runs the register and scene checks on the shipped fixture texts with the bundled
embedder (all-MiniLM-L6-v2, CPU, about 170 short texts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from pytest_scenelora.checks import (
    CHECKS,
    adapter_active,
    merge_equivalence,
    next_token_kl,
    register_centroids,
    register_holds,
    registers_unpack,
    scene_holds,
    scene_margins,
    style_survives_topic_shift,
)
from pytest_scenelora.checks.registers import EMPTY
from pytest_scenelora.scoring.embedders import centroid, cosine_matrix, normalize_rows
from pytest_scenelora.scoring.verdict import (
    SAMPLES_NEEDED_CAP,
    CheckInputError,
    Sample,
    Status,
    Verdict,
    decide,
    pick_worst,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REGISTERS = ("logic", "poetic", "body", "silence")

# ------------------------------------------------------------------ synthetic geometry
# Orthonormal directions: one shared component (weight 2, as in real sentence embeddings
# where every text in one language is alike), six scenes, four registers, four topics.
DIM = 48
_BASIS = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))[0].T
COMMON = _BASIS[0]
SCENES = {f"S{i}": _BASIS[1 + i] for i in range(6)}
REGISTER_DIRS = {name: _BASIS[7 + j] for j, name in enumerate(REGISTERS)}
TOPICS = {name: _BASIS[11 + k] for k, name in enumerate(("harbour", "forest", "kitchen", "winter"))}


def outputs(n: int, *, scene: str | None = None, register: str | None = None, topic: str | None = None,
            noise: float = 0.15, seed: int = 0, scene_w: float = 1.0, register_w: float = 0.8,
            topic_w: float = 1.0) -> np.ndarray:
    """*n* unit vectors made of the shared component plus the given directions and noise."""
    rng = np.random.default_rng(seed)
    v = np.tile(2 * COMMON, (n, 1))
    if scene:
        v = v + scene_w * SCENES[scene]
    if register:
        v = v + register_w * REGISTER_DIRS[register]
    if topic:
        v = v + topic_w * TOPICS[topic]
    return normalize_rows(v + noise * rng.normal(size=(n, DIM)))


def scene_vec(scene: str) -> np.ndarray:
    return normalize_rows(2 * COMMON + SCENES[scene])[0]


def topic_vec(topic: str) -> np.ndarray:
    return normalize_rows(2 * COMMON + TOPICS[topic])[0]


DISTRACTORS = np.stack([scene_vec(f"S{i}") for i in range(1, 6)])
DISTRACTOR_NAMES = [f"S{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def space():
    refs = {name: np.concatenate([outputs(6, register=name, topic=t, register_w=1.0, seed=i)
                                  for i, t in enumerate(TOPICS)])
            for name in REGISTERS}
    return register_centroids(refs)


# ----------------------------------------------------------------------- verdict rules


def test_decide_pass_fail_inconclusive_higher_is_better() -> None:
    high = decide("c", "a", [0.8, 0.82, 0.79, 0.81, 0.8], 0.5, seed=0)
    low = decide("c", "a", [0.1, 0.12, 0.09, 0.11, 0.1], 0.5, seed=0)
    mid = decide("c", "a", [0.2, 0.9, 0.4, 0.7], 0.5, seed=0)
    assert (high.status, low.status, mid.status) == (Status.PASS, Status.FAIL, Status.INCONCLUSIVE)
    assert high.passed and not low.passed and not mid.passed
    assert high.ci_low >= 0.5 and low.ci_high < 0.5 and mid.ci_low < 0.5 <= mid.ci_high
    assert high.samples_needed is None and low.samples_needed is None
    assert mid.samples_needed is not None and mid.samples_needed > mid.n


def test_decide_lower_is_better() -> None:
    good = decide("c", "a", [0.01, 0.02, 0.015], 0.1, higher_is_better=False, seed=0)
    bad = decide("c", "a", [0.5, 0.6, 0.55], 0.1, higher_is_better=False, seed=0)
    assert good.status is Status.PASS and bad.status is Status.FAIL
    assert bad.worst is not None and bad.worst.index == 1  # the largest is the worst


def test_decide_is_reproducible_by_seed() -> None:
    samples = np.random.default_rng(4).normal(0.3, 0.3, size=25)
    assert decide("c", "a", samples, 0.2, seed=3) == decide("c", "a", samples, 0.2, seed=3)
    assert decide("c", "a", samples, 0.2, seed=3).ci_low != decide("c", "a", samples, 0.2, seed=4).ci_low


def test_rates_use_the_wilson_interval() -> None:
    few = decide("c", "a", [1, 1, 1, 1, 1], 0.6, seed=0, rate=True)
    assert few.status is Status.INCONCLUSIVE  # 5 of 5 is not proof of a rate >= 0.6
    assert few.ci_high == 1.0 and few.ci_low == pytest.approx(0.566, abs=1e-3)
    assert few.detail["interval"] == "wilson"
    many = decide("c", "a", [1] * 30, 0.6, seed=0, rate=True)
    assert many.status is Status.PASS
    with pytest.raises(CheckInputError, match="0 or 1"):
        decide("c", "a", [0.5, 1], 0.6, seed=0, rate=True)


def test_samples_needed_estimate() -> None:
    verdict = decide("c", "a", [0.0, 0.2, 0.1, 0.3, 0.15, 0.25], 0.2, seed=0)
    assert verdict.status is Status.INCONCLUSIVE
    half = (verdict.ci_high - verdict.ci_low) / 2
    gap = abs(verdict.score - 0.2)
    assert verdict.samples_needed == min(SAMPLES_NEEDED_CAP, max(7, math.ceil(6 * (half / gap) ** 2)))
    on_threshold = decide("c", "a", [0.1, 0.3], 0.2, seed=0)
    assert on_threshold.samples_needed == SAMPLES_NEEDED_CAP
    assert f"even {SAMPLES_NEEDED_CAP} samples" in on_threshold.explain()
    one = decide("c", "a", [0.3], 0.2, seed=0)
    assert one.status is Status.INCONCLUSIVE and one.samples_needed is None
    assert "too few samples" in one.explain()


def test_non_finite_samples_fail() -> None:
    verdict = decide("c", "a", [0.3, math.nan], 0.2, seed=0)
    assert verdict.status is Status.FAIL and "not finite" in verdict.explain()
    assert verdict.worst is not None and verdict.worst.index == 1
    json.dumps(verdict.to_dict(), allow_nan=False)


def test_decide_rejects_empty_and_mismatched_inputs() -> None:
    with pytest.raises(CheckInputError, match="no samples"):
        decide("c", "a", [], 0.5, seed=0)
    with pytest.raises(CheckInputError, match="2 texts for 3 samples"):
        decide("c", "a", [1.0, 2.0, 3.0], 0.5, seed=0, texts=["x", "y"])


def test_explain_reads_like_the_failure_in_the_users_terms() -> None:
    texts = [f"text {i}" for i in range(10)]
    texts[3] = "The tide therefore " + "turns and turns again " * 20
    scores = [1, 1, 0, 0, 1, 0, 1, 0, 0, 0]
    contexts = [{"topic": "the harbour"}] * 10
    evidence = [0.5] * 10
    evidence[3] = -0.4
    verdict = decide("registers_unpack", "Δ42_poetic", scores, 0.7, seed=0, rate=True,
                     texts=texts, contexts=contexts, evidence=evidence)
    lines = verdict.explain().splitlines()
    assert lines[0].startswith("registers_unpack[Δ42_poetic]: FAIL  score 0.40 (95% CI ")
    assert lines[0].endswith(", n=10), needs >= 0.70")
    assert lines[1].startswith('  worst sample #3 (score 0.00, topic: the harbour): "The tide therefore')
    quoted = lines[1].split(": ", 2)[2]
    assert len(quoted) <= 162 and quoted.endswith('..."')
    inconclusive = decide("scene_holds", "Δ42_logic", [0.0, 0.1, 0.05, 0.12], 0.05, seed=1)
    assert inconclusive.explain().splitlines()[-1].startswith("  inconclusive: about ")
    assert inconclusive.explain().splitlines()[-1].endswith(" samples would decide it")
    passed = decide("c", "a", [0.9, 0.95], 0.5, seed=0)
    assert len(passed.explain().splitlines()) == 1


def test_verdict_json_round_trip() -> None:
    verdict = decide("scene_holds", "Δ42_poetic", [0.1, 0.3, -0.05, 0.2], 0.05, seed=2,
                     texts=["a", "b", "Маяк", "d"], contexts=[{"scene": "Δ42"}] * 4,
                     detail={"held": np.float32(0.75), "lost_to": {"Δ07": np.int64(1)}})
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False, ensure_ascii=False))
    again = Verdict.from_dict(data)
    assert again.to_dict() == verdict.to_dict()
    assert again.worst == verdict.worst and again.worst.text == "Маяк"
    assert again.samples == verdict.samples and again.status is verdict.status
    one = decide("c", "a", [0.3], 0.2, seed=0)  # infinite interval survives as null
    back = Verdict.from_dict(json.loads(json.dumps(one.to_dict(), allow_nan=False)))
    assert back.ci_low == -math.inf and back.ci_high == math.inf


def test_pick_worst_breaks_ties_by_evidence_and_respects_among() -> None:
    worst = pick_worst([0, 0, 1, 0], evidence=[0.1, -0.3, 0.5, -0.9], among=[0, 1, 2],
                       texts=list("abcd"))
    assert worst == Sample(index=1, score=0.0, text="b", context={})
    assert pick_worst([]) is None


def test_registry_names_every_check_with_a_docstring() -> None:
    assert set(CHECKS) == {"adapter_active", "scene_holds", "registers_unpack",
                           "style_survives_topic_shift", "merge_equivalence"}
    for name, check in CHECKS.items():
        assert check.__name__ == name
        assert check.__doc__ and "fail" in check.__doc__.lower()


# ---------------------------------------------------------------------- adapter_active


def test_next_token_kl_matches_the_definition_and_is_stable() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    p = np.exp(a) / np.exp(a).sum(axis=1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(next_token_kl(a, b), (p * np.log(p / q)).sum(axis=1), rtol=1e-10)
    np.testing.assert_array_equal(next_token_kl(a, a), np.zeros(3))
    huge = next_token_kl(a * 1e4, b * 1e4)  # softmax of these overflows if done naively
    assert np.isfinite(huge).all() and (huge > 0).all()
    assert next_token_kl(a[0], b[0]).shape == (1,)
    with pytest.raises(CheckInputError, match="probes, vocab"):
        next_token_kl(a, b[:, :5])


def test_adapter_active_passes_a_real_change_and_fails_a_zero_adapter() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(16, 50))
    adapted = base + rng.normal(scale=1.0, size=base.shape)
    live = adapter_active(next_token_kl(adapted, base), floor=0.01, seed=0, subject="Δ42_poetic")
    zero = adapter_active(next_token_kl(base.copy(), base), floor=0.01, seed=0, subject="Δ42_zero",
                          prompts=[f"probe {i}" for i in range(16)])
    assert live.status is Status.PASS and live.score > 0.1
    assert zero.status is Status.FAIL and zero.score == 0.0
    assert zero.detail["probes_below_floor"] == 16
    assert "worst sample #0 (score 0.00, probe: probe 0)" in zero.explain()


def test_adapter_active_is_inconclusive_on_few_noisy_probes() -> None:
    verdict = adapter_active([0.002, 0.03, 0.012], floor=0.01, seed=0, subject="Δ42_poetic")
    assert verdict.status is Status.INCONCLUSIVE and verdict.samples_needed


def test_adapter_active_fails_on_nan_logits() -> None:
    base = np.zeros((2, 4))
    broken = base.copy()
    broken[1, 2] = np.nan
    assert adapter_active(next_token_kl(broken, base), floor=0.01, seed=0, subject="x").status is Status.FAIL


# ------------------------------------------------------------------------- scene_holds


def test_scene_margin_is_contrastive_not_a_raw_cosine() -> None:
    generic = outputs(30, register="logic")  # says nothing about any scene
    raw = cosine_matrix(generic, scene_vec("S0"))[:, 0]
    assert raw.mean() > 0.7  # a raw cosine would call this on-scene
    margins = scene_margins(generic, scene_vec("S0"), DISTRACTORS)
    assert abs(margins.mean()) < 0.05
    verdict = scene_holds(generic, scene_vec("S0"), DISTRACTORS, threshold=0.05, seed=0, subject="generic")
    assert verdict.status is Status.FAIL


def test_scene_holds_passes_on_scene_outputs() -> None:
    good = outputs(30, scene="S0", register="poetic")
    verdict = scene_holds(good, scene_vec("S0"), DISTRACTORS, threshold=0.05, seed=0,
                          subject="Δ42_poetic", scene="S0", distractor_names=DISTRACTOR_NAMES)
    assert verdict.status is Status.PASS
    assert verdict.detail["held"] == 1.0 and verdict.detail["lost_to"] == {}


def test_scene_holds_fails_when_outputs_drift_to_another_scene() -> None:
    drifted = outputs(30, scene="S2", register="poetic")
    verdict = scene_holds(drifted, scene_vec("S0"), DISTRACTORS, threshold=0.05, seed=0,
                          subject="Δ42_poetic", distractor_names=DISTRACTOR_NAMES,
                          texts=[f"drifted {i}" for i in range(30)])
    assert verdict.status is Status.FAIL
    assert verdict.detail["lost_to"] == {"S2": 30}
    assert verdict.worst is not None and verdict.worst.context["closest other"] == "S2"


def test_scene_holds_compares_with_what_the_base_says() -> None:
    # an adapter that adds only a faint trace of the scene to what the base says anyway
    base = outputs(20, register="logic", seed=5)
    faint = normalize_rows(base + 0.05 * SCENES["S0"])
    without_base = scene_margins(faint, scene_vec("S0"), DISTRACTORS)
    with_base = scene_margins(faint, scene_vec("S0"), DISTRACTORS, base_vecs=base)
    assert (with_base <= without_base).all() and with_base.mean() < without_base.mean() - 0.02
    verdict = scene_holds(faint, scene_vec("S0"), DISTRACTORS, base_vecs=base, threshold=0.05, seed=0,
                          subject="Δ42_logic", distractor_names=DISTRACTOR_NAMES)
    assert verdict.status is Status.FAIL
    assert max(verdict.detail["lost_to"], key=verdict.detail["lost_to"].get) == "(base)"
    # base alone, without distractors, is also a valid contrast
    assert scene_margins(faint, scene_vec("S0"), None, base_vecs=base).shape == (20,)
    with pytest.raises(CheckInputError, match="contrast"):
        scene_margins(faint, scene_vec("S0"), None)


def test_a_diverse_base_does_not_outshine_on_scene_outputs() -> None:
    # Text-like geometry: a weaker shared component and more idiosyncratic noise. The base,
    # prompted with a hypertoken it never learnt, rambles about every other scene.
    rng = np.random.default_rng(3)

    def texts(n: int, scene: str, register: str, weight: float = 1.0) -> np.ndarray:
        return normalize_rows(COMMON + weight * SCENES[scene] + 0.8 * REGISTER_DIRS[register]
                              + 0.2 * rng.normal(size=(n, DIM)))

    def core(scene: str) -> np.ndarray:
        return normalize_rows(COMMON + SCENES[scene])[0]

    base = np.concatenate([texts(6, f"S{i}", REGISTERS[i % 4]) for i in range(1, 6)])
    good = texts(20, "S0", "poetic", weight=0.6)  # on the scene, if less squarely than its core
    distractors = np.stack([core(f"S{i}") for i in range(1, 6)])
    verdict = scene_holds(good, core("S0"), distractors, base_vecs=base, threshold=0.05, seed=0,
                          subject="Δ42_poetic")
    assert verdict.status is Status.PASS, verdict.explain()
    # against the base outputs' normalised centroid instead, the same outputs would not pass:
    # a centroid of many texts sits closer to each of them than they sit to each other
    rigged = cosine_matrix(good, core("S0"))[:, 0] - np.maximum(
        cosine_matrix(good, distractors).max(axis=1), cosine_matrix(good, centroid(base))[:, 0])
    assert rigged.mean() < 0.05
    assert (scene_margins(base, core("S0"), distractors, base_vecs=base) < 0).all()


def test_scene_holds_fails_on_empty_outputs() -> None:
    empty = np.zeros((10, DIM), dtype=np.float32)
    verdict = scene_holds(empty, scene_vec("S0"), DISTRACTORS, threshold=0.05, seed=0, subject="mute")
    assert verdict.status is Status.FAIL and verdict.score == 0.0


def test_scene_holds_is_inconclusive_on_few_noisy_samples() -> None:
    noisy = outputs(4, scene="S0", register="logic", noise=0.5, scene_w=0.6, seed=1)
    verdict = scene_holds(noisy, scene_vec("S0"), DISTRACTORS, threshold=0.05, seed=0, subject="Δ42_logic")
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.samples_needed is not None and verdict.samples_needed > 4


# -------------------------------------------------------------------- registers_unpack


def test_register_space_is_centred(space) -> None:
    assert space.names == REGISTERS
    np.testing.assert_allclose(np.linalg.norm(space.centroids, axis=1), 1.0, atol=1e-5)
    # the shared component is gone from the centroids: they no longer point along it
    assert np.abs(space.centroids @ COMMON).max() < 0.1
    assert space.classify(outputs(5, scene="S0", register="body")) == ["body"] * 5
    margins = space.margins(outputs(5, register="silence"), "silence")
    assert (margins > 0).all()
    assert space.classify(np.zeros((1, DIM))) == [EMPTY]
    assert space.margins(np.zeros((1, DIM)), "logic")[0] == -2.0
    with pytest.raises(CheckInputError, match="'lyric' is not one of"):
        space.margins(outputs(1), "lyric")


def unpack_inputs(register_by_adapter: dict[str, str], *, n: int = 30, scene: str = "S0",
                  noise: float = 0.15) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    outs = {adapter: outputs(n, scene=scene, register=spoken, noise=noise, seed=i)
            for i, (adapter, spoken) in enumerate(register_by_adapter.items())}
    margins = {a: scene_margins(v, scene_vec("S0"), DISTRACTORS) for a, v in outs.items()}
    return outs, margins


ROLES = {f"Δ42_{r}": r for r in REGISTERS}


def test_registers_unpack_passes_when_each_role_speaks_its_register(space) -> None:
    outs, margins = unpack_inputs(ROLES)
    verdicts = registers_unpack(outs, ROLES, space, margins, threshold=0.05, seed=0)
    assert [v.subject for v in verdicts] == list(ROLES)
    assert all(v.status is Status.PASS for v in verdicts), [v.explain() for v in verdicts]
    assert verdicts[0].detail["classified_as"] == {"logic": 30}


def test_registers_unpack_fails_an_adapter_in_the_wrong_register(space) -> None:
    spoken = dict(ROLES, **{"Δ42_poetic": "logic"})  # the poetic adapter reasons instead
    outs, margins = unpack_inputs(spoken)
    verdicts = {v.subject: v for v in registers_unpack(outs, ROLES, space, margins, threshold=0.05, seed=0)}
    assert verdicts["Δ42_poetic"].status is Status.FAIL
    assert "mostly read as 'logic'" in verdicts["Δ42_poetic"].explain()
    assert verdicts["Δ42_poetic"].worst.context["nearest register"] == "logic"
    assert all(verdicts[a].status is Status.PASS for a in ROLES if a != "Δ42_poetic")


def test_registers_unpack_fails_when_all_roles_collapse_into_one_voice(space) -> None:
    outs, margins = unpack_inputs(dict.fromkeys(ROLES, "body"))
    statuses = {v.subject: v.status for v in registers_unpack(outs, ROLES, space, margins,
                                                              threshold=0.05, seed=0)}
    assert statuses == {"Δ42_logic": Status.FAIL, "Δ42_poetic": Status.FAIL,
                        "Δ42_body": Status.PASS, "Δ42_silence": Status.FAIL}


def test_registers_unpack_fails_a_register_that_loses_the_scene(space) -> None:
    outs, _ = unpack_inputs(ROLES, scene="S3")  # right voices, wrong scene
    margins = {a: scene_margins(v, scene_vec("S0"), DISTRACTORS) for a, v in outs.items()}
    verdicts = registers_unpack(outs, ROLES, space, margins, threshold=0.05, seed=0)
    assert all(v.status is Status.FAIL for v in verdicts)
    assert all(v.detail["register_held"] == 1.0 and v.detail["scene_held"] == 0.0 for v in verdicts)


def test_registers_unpack_is_inconclusive_on_few_noisy_samples(space) -> None:
    outs, margins = unpack_inputs({"Δ42_logic": "logic"}, n=4, noise=0.3)
    (verdict,) = registers_unpack(outs, {"Δ42_logic": "logic"}, space, margins, threshold=0.05, seed=0)
    assert verdict.status is Status.INCONCLUSIVE and verdict.samples_needed


def test_registers_unpack_fails_a_blend_that_reads_as_its_register_only_barely(space) -> None:
    # a voice with no register of its own: poetic and silence mixed, poetic a little ahead
    # (SmolLM2's mixed-register control). Most samples are classified poetic, so a verdict on
    # that share passes it; the mean weaker margin sees how little poetic they are.
    rng = np.random.default_rng(3)
    blend = normalize_rows(np.tile(2 * COMMON, (48, 1)) + SCENES["S0"] + 0.5 * REGISTER_DIRS["poetic"]
                           + 0.4 * REGISTER_DIRS["silence"] + 0.15 * rng.normal(size=(48, DIM)))
    margins = scene_margins(blend, scene_vec("S0"), DISTRACTORS)
    verdict = register_holds(blend, "poetic", space, margins, threshold=0.1, seed=0, subject="Δ42_poetic")
    assert verdict.status is Status.FAIL, verdict.explain()
    assert verdict.detail["register_held"] > 0.6 and verdict.detail["scene_held"] == 1.0
    by_share = register_holds(blend, "poetic", space, margins, threshold=0.5, seed=0, subject="Δ42_poetic",
                              by="rate")
    assert by_share.status is Status.PASS
    clear = normalize_rows(np.tile(2 * COMMON, (48, 1)) + SCENES["S0"] + 0.8 * REGISTER_DIRS["poetic"]
                           + 0.15 * rng.normal(size=(48, DIM)))
    margins = scene_margins(clear, scene_vec("S0"), DISTRACTORS)
    assert register_holds(clear, "poetic", space, margins, threshold=0.1, seed=0,
                          subject="Δ42_poetic").status is Status.PASS
    with pytest.raises(CheckInputError, match="judge by 'margin' or 'rate'"):
        register_holds(clear, "poetic", space, margins, threshold=0.1, seed=0, subject="x", by="share")


def test_register_holds_checks_one_adapter_alone(space) -> None:
    alone = outputs(30, scene="S0", register="silence")
    verdict = register_holds(alone, "silence", space, threshold=0.05, seed=0, subject="Δ42_silence")
    assert verdict.status is Status.PASS and verdict.detail["scene_held"] is None
    wrong = register_holds(alone, "poetic", space, threshold=0.05, seed=0, subject="Δ42_poetic")
    assert wrong.status is Status.FAIL and wrong.check == "registers_unpack"
    with pytest.raises(CheckInputError, match="no register given"):
        registers_unpack({"Δ42_x": alone}, {}, space, None, threshold=0.05, seed=0)


# ---------------------------------------------------------- style_survives_topic_shift


def topic_outputs(register: str, *, n: int = 10, follow: bool = True, noise: float = 0.15,
                  only: str | None = None) -> dict[str, np.ndarray]:
    out = {}
    for i, topic in enumerate(TOPICS):
        on_topic = follow if only is None or topic == only else True
        if on_topic:
            out[topic] = outputs(n, topic=topic, register=register, noise=noise, seed=10 + i)
        else:  # recites the home scene whatever the prompt
            out[topic] = outputs(n, scene="S0", register=register, noise=noise, seed=10 + i)
    return out


TOPIC_VECS = {t: topic_vec(t) for t in TOPICS}


def test_style_survives_topic_shift_passes_on_topic_in_register(space) -> None:
    verdict = style_survives_topic_shift(topic_outputs("poetic"), TOPIC_VECS, scene_vec("S0"), space,
                                         "poetic", threshold=0.6, seed=0, subject="Δ42_poetic")
    assert verdict.status is Status.PASS
    assert verdict.detail["per_topic"] == dict.fromkeys(TOPICS, 1.0)


def test_style_survives_topic_shift_fails_an_adapter_reciting_its_scene(space) -> None:
    verdict = style_survives_topic_shift(topic_outputs("poetic", follow=False), TOPIC_VECS, scene_vec("S0"),
                                         space, "poetic", threshold=0.6, seed=0, subject="Δ42_poetic")
    assert verdict.status is Status.FAIL
    assert verdict.detail["followed_topic"] == 0.0 and verdict.detail["kept_register"] == 1.0


def test_style_survives_topic_shift_fails_when_the_voice_dissolves(space) -> None:
    verdict = style_survives_topic_shift(topic_outputs("logic"), TOPIC_VECS, scene_vec("S0"), space,
                                         "poetic", threshold=0.6, seed=0, subject="Δ42_poetic")
    assert verdict.status is Status.FAIL and verdict.detail["kept_register"] == 0.0


def test_style_survives_topic_shift_reports_the_worst_topic(space) -> None:
    by_topic = topic_outputs("body", follow=False, only="kitchen")
    texts = {t: [f"{t} answer {i}" for i in range(10)] for t in TOPICS}
    verdict = style_survives_topic_shift(by_topic, TOPIC_VECS, scene_vec("S0"), space, "body",
                                         threshold=0.6, seed=0, subject="Δ42_body", texts_by_topic=texts,
                                         topic_titles={"kitchen": "The kitchen"})
    assert verdict.detail["worst_topic"] == "kitchen"
    assert verdict.detail["per_topic"]["kitchen"] == 0.0
    assert verdict.worst is not None and verdict.worst.context["topic"] == "The kitchen"
    assert verdict.worst.text.startswith("kitchen answer")
    assert verdict.score == pytest.approx(0.75)


def test_style_survives_topic_shift_is_inconclusive_on_few_noisy_samples(space) -> None:
    few = {t: v[:1] for t, v in topic_outputs("silence", noise=0.6).items()}
    verdict = style_survives_topic_shift(few, TOPIC_VECS, scene_vec("S0"), space, "silence",
                                         threshold=0.6, seed=0, subject="Δ42_silence")
    assert verdict.status is Status.INCONCLUSIVE


# ------------------------------------------------------------------- merge_equivalence


def test_merge_equivalence_passes_an_exact_merge_and_fails_a_scaled_one() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(scale=3.0, size=(8, 100))
    delta = rng.normal(scale=0.5, size=base.shape)
    unmerged = base + delta
    merged = unmerged + rng.normal(scale=1e-6, size=base.shape)  # rounding only
    ok = merge_equivalence(unmerged, merged, tolerance=1e-4, subject="Δ42_poetic")
    assert ok.status is Status.PASS and ok.score < 1e-4
    scaled = merge_equivalence(unmerged, base + 2 * delta, tolerance=1e-4, subject="Δ42_poetic (merged x2)",
                               prompts=[f"probe {i}" for i in range(8)])
    assert scaled.status is Status.FAIL and scaled.detail["probes_over_tolerance"] == 8
    assert "(max over 8 probes), needs <= 0.0001" in scaled.explain()
    assert scaled.worst is not None and scaled.worst.score == scaled.score


def test_merge_equivalence_fails_on_nan_and_checks_shapes() -> None:
    logits = np.zeros((2, 3, 5))
    broken = logits.copy()
    broken[1, 0, 0] = np.nan
    verdict = merge_equivalence(logits, broken, tolerance=1e-3, subject="x")
    assert verdict.status is Status.FAIL and verdict.worst.index == 1
    json.dumps(verdict.to_dict(), allow_nan=False)
    with pytest.raises(CheckInputError, match="differ in shape"):
        merge_equivalence(logits, logits[:1], tolerance=1e-3, subject="x")


# -------------------------------------------------- the shipped texts, real embedder
# Measured on all 3,408 training texts (see the issue note): register classification
# 99.4% (logic 99.9, poetic 99.4, body 99.9, silence 98.6) with centroids from all 384
# references, 99.0% with the 48 used here; Δ42 texts' scene margin against the other 7
# training scenes' cores > 0 for 720/720 (mean 0.49, 5th percentile 0.27).


def _load_fixtures() -> dict:
    return {
        "registers": yaml.safe_load((FIXTURES / "registers.yaml").read_text("utf-8"))["registers"],
        "scenes": yaml.safe_load((FIXTURES / "scenes.yaml").read_text("utf-8"))["scenes"],
        "rows": [json.loads(line) for line in
                 (FIXTURES / "train" / "roles.jsonl").read_text("utf-8").splitlines()],
    }


def _evenly(items: list, k: int) -> list:
    return [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]


@pytest.fixture(scope="module")
def shipped() -> dict:
    """The fixture texts this section needs, embedded once in one deduplicated call."""
    from pytest_scenelora.scoring.embedders import Embedder

    data = _load_fixtures()
    # every other topic's first reference: 12 per register (measured: 99.0% of all training
    # texts classified right with these, against 99.4% with all 96 per register)
    refs = {g["name"]: [r["text"] for r in g["references"][::8]] for g in data["registers"]}
    train_scenes = [s for s in data["scenes"] if s["split"] == "train"]
    rows = data["rows"]
    by_role = {}
    for role in REGISTERS:
        mine = [r for r in rows if r["role"] == role]
        by_role[role] = {
            "Δ42": [r["text"] for r in _evenly([r for r in mine if r.get("scene") == "Δ42"], 12)],
            "other scenes": [r["text"] for r in
                             _evenly([r for r in mine if r.get("scene") not in (None, "Δ42")], 6)],
            "topics": [r["text"] for r in _evenly([r for r in mine if "topic" in r], 6)],
        }
    shift_topics = ("harbour", "forest", "winter")  # topics with references in `refs`
    poetic_on_topic = {t: [r["text"] for r in rows if r.get("topic") == t and r["role"] == "poetic"][:6]
                       for t in shift_topics}
    # a topic's meaning: its references in all four registers, compared by mean cosine
    # (measured on 448 training topic texts: 98.7% follow their topic this way, as with
    # the one-sentence description; reciting Δ42 texts: 0%)
    topic_refs = {t: [r["text"] for g in data["registers"] for r in g["references"][::8] if r["topic"] == t]
                  for t in shift_topics}
    everything = ([t for ts in refs.values() for t in ts] + [s["core"] for s in train_scenes]
                  + [t for parts in by_role.values() for ts in parts.values() for t in ts]
                  + [t for ts in poetic_on_topic.values() for t in ts])
    embedder = Embedder()
    table = dict(zip(everything, embedder.embed(everything), strict=True))
    embed: Callable[[list[str]], np.ndarray] = lambda texts: np.stack([table[t] for t in texts])  # noqa: E731
    return {
        "embed": embed,
        "space": register_centroids({name: embed(ts) for name, ts in refs.items()}),
        "cores": {s["id"]: embed([s["core"]])[0] for s in train_scenes},
        "by_role": by_role,
        "poetic_on_topic": poetic_on_topic,
        "topic_vecs": {t: embed(ts) for t, ts in topic_refs.items()},
    }


def _distractors(shipped: dict, scene: str) -> np.ndarray:
    return np.stack([v for k, v in shipped["cores"].items() if k != scene])


def test_training_texts_are_classified_to_their_own_register(shipped: dict) -> None:
    space, embed = shipped["space"], shipped["embed"]
    for role, parts in shipped["by_role"].items():
        texts = [t for ts in parts.values() for t in ts]
        labels = space.classify(embed(texts))
        accuracy = sum(label == role for label in labels) / len(labels)
        assert accuracy >= 0.9, f"{role}: {accuracy:.2f} of its training texts classified as {role}"


def test_delta42_training_texts_hold_their_scene(shipped: dict) -> None:
    texts = [t for parts in shipped["by_role"].values() for t in parts["Δ42"]]
    margins = scene_margins(shipped["embed"](texts), shipped["cores"]["Δ42"], _distractors(shipped, "Δ42"))
    assert (margins > 0).mean() >= 0.9
    verdict = scene_holds(shipped["embed"](texts), shipped["cores"]["Δ42"], _distractors(shipped, "Δ42"),
                          threshold=0.1, seed=0, subject="Δ42 training texts")
    assert verdict.status is Status.PASS, verdict.explain()


def test_other_scenes_texts_do_not_hold_delta42(shipped: dict) -> None:
    texts = [t for parts in shipped["by_role"].values() for t in parts["other scenes"]]
    verdict = scene_holds(shipped["embed"](texts), shipped["cores"]["Δ42"], _distractors(shipped, "Δ42"),
                          threshold=0.1, seed=0, subject="other scenes' texts")
    assert verdict.status is Status.FAIL


def test_registers_unpack_on_the_shipped_texts(shipped: dict) -> None:
    embed, space = shipped["embed"], shipped["space"]
    outs = {f"Δ42_{role}": embed(parts["Δ42"]) for role, parts in shipped["by_role"].items()}
    distractors = _distractors(shipped, "Δ42")
    margins = {a: scene_margins(v, shipped["cores"]["Δ42"], distractors) for a, v in outs.items()}
    verdicts = registers_unpack(outs, ROLES, space, margins, threshold=0.1, seed=0)
    assert all(v.status is Status.PASS for v in verdicts), [v.explain() for v in verdicts]
    # the logic adapter's texts, presented as the poetic adapter's: the wrong register fails
    wrong = registers_unpack({"Δ42_poetic": outs["Δ42_logic"]}, ROLES, space,
                             {"Δ42_poetic": margins["Δ42_logic"]}, threshold=0.1, seed=0,
                             texts_by_adapter={"Δ42_poetic": shipped["by_role"]["logic"]["Δ42"]})
    assert wrong[0].status is Status.FAIL
    assert wrong[0].detail["classified_as"].get("logic", 0) >= 10
    assert "worst sample #" in wrong[0].explain()


def test_style_survives_topic_shift_on_the_shipped_texts(shipped: dict) -> None:
    embed, space = shipped["embed"], shipped["space"]
    on_topic = {t: embed(ts) for t, ts in shipped["poetic_on_topic"].items()}
    verdict = style_survives_topic_shift(on_topic, shipped["topic_vecs"], shipped["cores"]["Δ42"], space,
                                         "poetic", threshold=0.6, seed=0, subject="Δ42_poetic")
    assert verdict.status is Status.PASS, verdict.explain()
    reciting = embed(shipped["by_role"]["poetic"]["Δ42"][:6])
    stuck = style_survives_topic_shift(dict.fromkeys(on_topic, reciting), shipped["topic_vecs"],
                                       shipped["cores"]["Δ42"], space, "poetic", threshold=0.6, seed=0,
                                       subject="Δ42_poetic (reciting)")
    assert stuck.status is Status.FAIL and stuck.detail["followed_topic"] == 0.0


def test_unseen_scenes_pools_each_distinct_scene_once_in_the_order_tried() -> None:
    """Shrinking re-runs scenes; the verdict pools each scene once, and a scene first tried
    late is listed, not cut off by the repeats before it."""
    from pytest_scenelora import shipped
    from pytest_scenelora.checks.unseen import _Trial, distinct_trials
    from pytest_scenelora.scenes import load_scenes
    from pytest_scenelora.scoring.verdict import decide
    from pytest_scenelora.strategies import novel_vocabularies, scene_from_fields

    scene_set = load_scenes(shipped.scenes_file())
    vocab = novel_vocabularies(scene_set)
    a, b, c = (scene_from_fields(scene_set, {name: words[i % len(words)] for name, words in vocab.items()})
               for i in range(3))
    verdict = decide("unseen_scenes", "Δ42_poetic", [1.0, 0.0], 0.5, seed=0, rate=True)
    trials = [_Trial(scene, 0.5, verdict, ["x", "y"]) for scene in (a, b, a, a, c)]
    assert [t.scene.core for t in distinct_trials(trials)] == [a.core, b.core, c.core]
    assert distinct_trials(trials)[0] is trials[0]


def test_a_confidently_failing_unseen_scene_fails_the_check_even_when_the_pooled_interval_is_undecided() -> None:
    """Three drawn scenes: one held on every sample, one on 1 of 8 (its own interval below
    the bar), one on 5 of 8. Pooled over three clusters the interval straddles 0.5; the
    scene that failed on its own is a counterexample, so the check fails."""
    from types import SimpleNamespace

    from pytest_scenelora import shipped
    from pytest_scenelora.checks.unseen import SceneFailed, _pooled_verdict, _Trial
    from pytest_scenelora.scenes import load_scenes
    from pytest_scenelora.scoring.verdict import Status, decide
    from pytest_scenelora.strategies import novel_vocabularies, scene_from_fields

    scene_set = load_scenes(shipped.scenes_file())
    vocab = novel_vocabularies(scene_set)
    scenes = [scene_from_fields(scene_set, {name: words[i % len(words)] for name, words in vocab.items()})
              for i in range(3)]
    trials = []
    for scene, held in zip(scenes, (8, 1, 5), strict=True):
        success = [1.0] * held + [0.0] * (8 - held)
        trials.append(_Trial(scene, held / 8, decide("unseen_scenes", "Δ42_poetic", success, 0.5, seed=0,
                                                     rate=True), ["text"] * 8))
    assert trials[1].verdict.status is Status.FAIL
    context = SimpleNamespace(seed=0)
    undecided = _pooled_verdict(context, "Δ42_poetic", "poetic", 0.5, trials, None)
    assert undecided.status is Status.INCONCLUSIVE and undecided.detail["clusters"] == 3
    failed = _pooled_verdict(context, "Δ42_poetic", "poetic", 0.5, trials,
                             SceneFailed("held on 1 of 8", trials[1]))
    assert failed.status is Status.FAIL and failed.samples_needed is None
    assert failed.detail["minimal_failing_scene"]["core"] == scenes[1].core
