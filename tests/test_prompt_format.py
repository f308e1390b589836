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


def test_check_prompts_go_through_the_template(chat_base: Path) -> None:
    from types import SimpleNamespace

    from pytest_scenelora.checks.context import CheckContext
    from pytest_scenelora.scenes import Topic

    session = SimpleNamespace(format_prompt=prompt_formatter("chat", chat_base))
    context = CheckContext(SimpleNamespace(session=session, BATCH_ROWS=8), suite=None)
    topic = Topic(id="sea", title="The sea", description="the sea at night")
    assert context.topic_prompt(topic) == "<|turn|>user\nTopic: the sea at night<|end|>\n<|turn|>assistant\n"


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
