"""``--prompt-format plain|chat|auto``: prompts through the base's chat template, or not.

Runs on the tiny base (no chat template) and on a copy of its tokenizer given one, so
nothing here needs the real instruction-tuned base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_scenelora.engine.chat import (
    PromptFormat,
    chat_template_of,
    prompt_formatter,
    resolve_prompt_format,
)
from pytest_scenelora.errors import BaseModelError

TEMPLATE = ("{% for m in messages %}<|turn|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}")


@pytest.fixture
def chat_base(tiny_base_dir: Path, tmp_path: Path) -> Path:
    """The tiny base's files plus a chat template: an 'instruction-tuned' tiny base."""
    folder = tmp_path / "tiny-chat"
    shutil.copytree(tiny_base_dir, folder)
    (folder / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    return folder


def test_the_tiny_base_has_no_template_and_auto_is_plain(tiny_base_dir: Path) -> None:
    assert chat_template_of(tiny_base_dir) is None
    assert resolve_prompt_format("auto", tiny_base_dir) is PromptFormat.PLAIN
    assert prompt_formatter("auto", tiny_base_dir)("Scene: Δ42\n") == "Scene: Δ42\n"


def test_chat_on_a_base_without_a_template_is_one_line(tiny_base_dir: Path) -> None:
    with pytest.raises(BaseModelError) as info:
        resolve_prompt_format("chat", tiny_base_dir)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"prompt_format chat: the base {tiny_base_dir} has no chat template")
    assert str(info.value).endswith("use prompt_format plain (or auto)")


def test_chat_wraps_the_prompt_as_the_users_turn(chat_base: Path) -> None:
    assert resolve_prompt_format("auto", chat_base) is PromptFormat.CHAT
    chat = prompt_formatter("chat", chat_base)
    assert chat("Scene: Δ42\n") == "<|turn|>user\nScene: Δ42<|end|>\n<|turn|>assistant\n"


def test_a_template_in_tokenizer_config_counts_too(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}), encoding="utf-8")
    assert chat_template_of(tmp_path) == TEMPLATE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE}]}))
    assert chat_template_of(tmp_path) == TEMPLATE


def test_a_bad_value_is_a_usage_error_echoing_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--prompt-format", "jinja")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'jinja' is not a prompt format; use auto|plain|chat*"])


def test_the_header_says_the_format_and_warns_on_an_adapter_trained_otherwise(
        pytester: pytest.Pytester, chat_base: Path, make_adapter) -> None:
    adapter = make_adapter("Δ42_poetic", seed=3)  # no prompt_format in its metadata: plain
    pytester.makepyfile("def test_x(): pass")
    plain = pytester.runpytest("--base-model", str(chat_base), "--adapter", str(adapter))
    plain.stdout.fnmatch_lines(["scenelora: prompt format plain"])
    assert "warning" not in plain.stdout.str()
    chat = pytester.runpytest("--base-model", str(chat_base), "--adapter", str(adapter), "--prompt-format", "auto")
    chat.stdout.fnmatch_lines([
        "scenelora: prompt format chat (auto)",
        "scenelora: warning: Δ42_poetic was trained with prompt format plain, this run uses chat "
        "(--prompt-format plain tests it as it was trained)",
    ])


def _suite(folder: Path, name: str, head: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"{head}adapters: \"Δ42_*\"\nchecks:\n  - kind: adapter_active\n    probes: 2\n"
                    "    threshold: 0.005\n", encoding="utf-8")
    return path


def test_check_prompts_go_through_the_suites_format_else_the_runs(chat_base: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pytest_scenelora.checks.context import CheckContext
    from pytest_scenelora.scenes import Topic
    from pytest_scenelora.session import SceneSession
    from pytest_scenelora.settings import Settings
    from pytest_scenelora.suite import load_suite

    topic = Topic(id="sea", title="The sea", description="the sea at night")
    chat_turn = "<|turn|>user\nTopic: the sea at night<|end|>\n<|turn|>assistant\n"

    def prompt(run_format: str, suite: Path) -> str:
        session = SceneSession(Settings(base_model=str(chat_base), prompt_format=run_format))
        context = CheckContext(SimpleNamespace(session=session, BATCH_ROWS=8), suite=load_suite(suite))
        return context.topic_prompt(topic)

    chat = _suite(tmp_path, "chat", "prompt_format: chat\n")
    plain = _suite(tmp_path, "plain", "prompt_format: plain\n")
    neither = _suite(tmp_path, "neither")
    assert prompt("plain", chat) == chat_turn
    assert prompt("chat", plain) == "Topic: the sea at night\n"
    assert (prompt("chat", neither), prompt("plain", neither)) == (chat_turn, "Topic: the sea at night\n")


def test_a_suites_prompt_format_is_one_of_three_at_its_line(tmp_path: Path) -> None:
    from pytest_scenelora.suite import SuiteError, load_suite

    assert load_suite(_suite(tmp_path, "auto", "prompt_format: auto\n")).prompt_format == "auto"
    assert load_suite(_suite(tmp_path, "unset")).prompt_format is None
    with pytest.raises(SuiteError) as info:
        load_suite(_suite(tmp_path, "bad", "suite: x\nprompt_format: jinja\n"))
    assert str(info.value) == (f"{tmp_path / 'bad.yaml'}:2: the suite 'prompt_format' is 'jinja'; "
                               "write 'auto' or 'plain' or 'chat'")


def test_a_suite_in_chat_format_runs_in_it_says_so_and_warns(pytester: pytest.Pytester, chat_base: Path,
                                                             make_adapter) -> None:
    adapter = make_adapter("Δ42_poetic", seed=3)  # trained (as far as its metadata says) on plain prompts
    _suite(pytester.path, "chat", "prompt_format: auto\n")
    _suite(pytester.path, "plain")
    result = pytester.runpytest("--base-model", str(chat_base), "--adapter", str(adapter),
                                "--scenelora-json", "out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "scenelora: prompt format plain",
        "scenelora: chat.yaml uses prompt format chat (its prompt_format: auto; the run's is plain)",
        "scenelora: warning: Δ42_poetic was trained with prompt format plain, chat.yaml tests it in chat "
        "(prompt_format: plain tests it as it was trained)",
    ])
    results = json.loads((pytester.path / "out.json").read_text())["results"]
    records = {Path(r["suite"]).name: r for r in results}
    assert (records["chat.yaml"]["prompt_format"], records["plain.yaml"]["prompt_format"]) == ("chat", "plain")
    # the same probes asked in another format: another next-token distribution
    assert records["chat.yaml"]["verdict"]["score"] != records["plain.yaml"]["verdict"]["score"]


def test_a_suite_in_chat_format_on_a_base_without_a_template_is_its_error(
        pytester: pytest.Pytester, tiny_base_dir: Path, make_adapter) -> None:
    adapter = make_adapter("Δ42_poetic", seed=3)
    _suite(pytester.path, "chat", "suite: chat\nprompt_format: chat\n")
    _suite(pytester.path, "plain")
    result = pytester.runpytest("--base-model", str(tiny_base_dir), "--adapter", str(adapter),
                                "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)  # a collection error stops the session, as pytest does
    result.stdout.fnmatch_lines([f"*/chat.yaml:2: prompt_format chat: the base {tiny_base_dir} has no chat "
                                 "template*use prompt_format plain (or auto)"])


def test_a_voice_trained_in_chat_format_records_it_and_is_cached_apart(chat_base: Path, tmp_path: Path,
                                                                        tiny_base_dir: Path) -> None:
    from dataclasses import replace

    from pytest_scenelora.engine.training import TrainSpec, train
    from pytest_scenelora.engine.training.data import build_training_set
    from pytest_scenelora.engine.training.store import in_prompt_format

    spec = TrainSpec(scene="Δ42", role="poetic", base=str(chat_base), steps=2, batch_size=2, prompt_format="auto")
    resolved, pairs = in_prompt_format(spec, build_training_set(spec), chat_base)
    assert resolved.prompt_format is PromptFormat.CHAT
    assert all(p.startswith("<|turn|>user\n") and p.endswith("<|end|>\n<|turn|>assistant\n") for p, _ in pairs.pairs)
    plain_spec = replace(spec, prompt_format="plain")
    assert resolved.hyperparameters()["prompt_format"] == "chat"
    assert "prompt_format" not in plain_spec.hyperparameters(), "plain keeps the cache keys voices had before"
    chat = train(spec, tmp_path / "chat")
    plain = train(plain_spec, tmp_path / "plain")
    assert (chat.info.metadata["prompt_format"], plain.info.metadata["prompt_format"]) == ("chat", "plain")
    assert chat.key != plain.key
    with pytest.raises(BaseModelError, match="has no chat template"):
        train(replace(spec, base=str(tiny_base_dir), prompt_format="chat"), tmp_path / "none")
