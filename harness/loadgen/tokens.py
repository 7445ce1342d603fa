"""The target model's tokenizer, for counting tokens of prompts and received text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ..errors import UsageError

__all__ = ["TokenCounter", "WhitespaceCounter", "default_tokenizer_dir", "load_tokenizer"]


def default_tokenizer_dir() -> Path:
    """SmolLM2's folder in the reference target's model cache (`$LLM_CHAOS_CACHE`, default
    `~/.cache/llm-chaos`), read at call time; the harness does not import the target, so the
    cache's layout is named here too (`targets/reference/models.py` owns it)."""
    root = os.environ.get("LLM_CHAOS_CACHE") or Path.home() / ".cache" / "llm-chaos"
    return Path(root) / "smollm2-135m-instruct"


class TokenCounter(Protocol):
    """Counts tokens of a text, and turns token counts back into text."""

    name: str

    def count(self, text: str) -> int: ...

    def is_single_token(self, word: str) -> bool: ...


class HFTokenizer:
    """A `tokenizer.json` loaded with the `tokenizers` library (what transformers uses inside).

    It is loaded without transformers to keep Locust processes light; special tokens are not
    added, so a count is of the text alone.
    """

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.name = str(path)
        self._tok = Tokenizer.from_file(str(path))

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def is_single_token(self, word: str) -> bool:
        return self.count(word) == 1


class WhitespaceCounter:
    """Fallback when no tokenizer is given: words split on whitespace (said so in records)."""

    name = "whitespace"

    def count(self, text: str) -> int:
        return len(text.split())

    def is_single_token(self, word: str) -> bool:
        return len(word.split()) == 1


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
