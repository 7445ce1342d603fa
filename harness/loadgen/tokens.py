"""The target model's tokenizer, for counting tokens of prompts and received text.

A chat prompt is counted as a server counts it: through the model's chat template (its role
markers and default system prompt included), so our `prompt_tokens` and a server's usage are
the same figure. The harness does not import the reference target, so the template is rendered
here as transformers renders it (sandboxed Jinja, trimmed blocks), not with its renderer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import UsageError

__all__ = ["TokenCounter", "WhitespaceCounter", "default_tokenizer_dir", "load_tokenizer"]


def default_tokenizer_dir() -> Path:
    """SmolLM2's folder in the reference target's model cache (`$LLM_CHAOS_CACHE`, default
    `~/.cache/llm-chaos`), read at call time; the harness does not import the target, so the
    cache's layout is named here too (`targets/reference/models.py` owns it)."""
    root = os.environ.get("LLM_CHAOS_CACHE") or Path.home() / ".cache" / "llm-chaos"
    return Path(root) / "smollm2-135m-instruct"


class TokenCounter(Protocol):
    """Counts tokens of a text, and of a chat prompt as the server's template frames it."""

    name: str

    def count(self, text: str) -> int: ...

    def is_single_token(self, word: str) -> bool: ...

    def count_messages(self, messages: Sequence[Mapping[str, str]]) -> int: ...


class HFTokenizer:
    """A `tokenizer.json` loaded with the `tokenizers` library (what transformers uses inside).

    It is loaded without transformers to keep Locust processes light; special tokens are not
    added, so a count is of the text alone.
    """

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.name = str(path)
        self._tok = Tokenizer.from_file(str(path))
        self._template = _chat_template(path.parent)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def is_single_token(self, word: str) -> bool:
        return self.count(word) == 1

    def count_messages(self, messages: Sequence[Mapping[str, str]]) -> int:
        """Tokens of the prompt the server builds from `messages` (its generation prompt
        included); without a template in the folder, of the contents alone."""
        if self._template is None:
            return sum(self.count(m["content"]) for m in messages)
        render, special = self._template
        try:
            text = render(messages=list(messages), add_generation_prompt=True, **special)
        except Exception:  # jinja's errors, or raise_exception: a template may reject a
            # conversation (its order of roles) as the server would; count what was sent
            return sum(self.count(m["content"]) for m in messages)
        return self.count(text)


def _chat_template(folder: Path) -> tuple[Any, dict[str, str]] | None:
    """The folder's chat template, compiled, and the special tokens it may name."""
    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text())
        except ValueError:
            config = {}
    source = config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text()
    if not isinstance(source, str):
        return None
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, sort_keys=False: \
        json.dumps(x, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    special = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            special[name] = value
    return env.from_string(source).render, special


class WhitespaceCounter:
    """Fallback when no tokenizer is given: words split on whitespace (said so in records)."""

    name = "whitespace"

    def count(self, text: str) -> int:
        return len(text.split())

    def is_single_token(self, word: str) -> bool:
        return len(word.split()) == 1

    def count_messages(self, messages: Sequence[Mapping[str, str]]) -> int:
        return sum(self.count(m["content"]) for m in messages)


def load_tokenizer(spec: str | None) -> TokenCounter | None:
    """`spec`: a folder or tokenizer.json path, `none`, or None for the default (if present).

    Raises UsageError when a named tokenizer cannot be loaded.
    """
    if spec is None:
        spec = os.environ.get("LLM_CHAOS_TOKENIZER")
        if spec is None:
            default = default_tokenizer_dir() / "tokenizer.json"
            return HFTokenizer(default) if default.is_file() else None
    if spec.lower() in ("none", ""):
        return None
    if spec == "whitespace":
        return WhitespaceCounter()
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"--tokenizer {spec}: no tokenizer.json there; give the folder of the "
                         "target model (offline), `whitespace` or `none`")
    try:
        return HFTokenizer(path)
    except Exception as exc:  # the tokenizers library raises its own Exception subclass
        raise UsageError(f"--tokenizer {spec}: cannot load it: {exc}") from exc
