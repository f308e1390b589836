"""How a prompt is put to a base: as plain text, or through the base's chat template.

An instruction-tuned base (SmolLM2-135M-Instruct, Saiga, any ``*-Instruct``) was trained
on conversations: a prompt wrapped in its chat template (``<|im_start|>user ...``) is what
it expects, and its answers end at the template's end-of-turn token. A base without a
template (the tiny base, Mistral-7B-v0.1) gets the plain prompt.

``prompt_format`` is ``auto`` (chat when the base's tokenizer has a template, else plain),
``plain`` or ``chat``. The same format must be used to train an adapter and to test it: it
is recorded in the adapter's metadata, and a mismatch is a warning naming both. The
formatted text is what enters every cache key, so samples made in one format are never
served to the other.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from pathlib import Path

from ..errors import BaseModelError

__all__ = ["PromptFormat", "chat_template_of", "prompt_formatter", "resolve_prompt_format"]


class PromptFormat(str, enum.Enum):
    AUTO = "auto"
    PLAIN = "plain"
    CHAT = "chat"


#: What an adapter without a ``prompt_format`` in its metadata was trained with.
LEGACY_FORMAT = PromptFormat.PLAIN


def chat_template_of(model_dir: Path) -> str | None:
    """The chat template a base folder's tokenizer carries, read from its files alone
    (``chat_template.jinja``, else ``tokenizer_config.json``), or None."""
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
        return text if text.strip() else None
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def resolve_prompt_format(requested: PromptFormat | str, model_dir: Path) -> PromptFormat:
    """``plain`` or ``chat`` for this base: ``auto`` picks chat when the base has a template;
    ``chat`` on a base without one is one line saying so."""
    requested = PromptFormat(requested)
    has_template = chat_template_of(model_dir) is not None
    if requested is PromptFormat.AUTO:
        return PromptFormat.CHAT if has_template else PromptFormat.PLAIN
    if requested is PromptFormat.CHAT and not has_template:
        raise BaseModelError(
            f"prompt_format chat: the base {model_dir} has no chat template (no chat_template.jinja "
            "and none in tokenizer_config.json); use prompt_format plain (or auto)"
        )
    return requested


def prompt_formatter(fmt: PromptFormat | str, model_dir: Path) -> Callable[[str], str]:
    """A function from a plain prompt (``Scene: Δ42\\n``) to the text the model is given.

    With ``chat`` the prompt (without its trailing newline) is the user's turn and the
    template's assistant header follows, so the model answers as the assistant; the
    tokenizer is loaded once, on the first prompt."""
    fmt = PromptFormat(fmt)
    if fmt is PromptFormat.AUTO:
        fmt = resolve_prompt_format(fmt, model_dir)
    if fmt is PromptFormat.PLAIN:
        return _plain
    resolve_prompt_format(fmt, model_dir)  # says so when the base has no template
    tokenizer = None
    memo: dict[str, str] = {}

    def chat(prompt: str) -> str:
        nonlocal tokenizer
        if prompt not in memo:
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            turn = [{"role": "user", "content": prompt.rstrip("\n")}]
            memo[prompt] = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        return memo[prompt]

    return chat


def _plain(prompt: str) -> str:
    return prompt
