"""A tokenizer over the `tokenizers` library and the folder's Jinja chat template.

Hand-written in place of transformers' PreTrainedTokenizerFast for start-up time only (importing
transformers costs ~0.4 s of a worker's cold start here): it offers exactly the calls the engine
makes, with transformers' semantics, and a test holds it to transformers' output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["FastTokenizer"]


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("content")) if value.get("content") is not None else None
    return str(value) if value is not None else None


class FastTokenizer:
    """encode / decode / chat template of a Hugging Face folder with a tokenizer.json."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        self.special = {name: _token_text(config.get(name))
                        for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        eos = self.special["eos_token"]
        self.eos_token_id: int | None = self._tok.token_to_id(eos) if eos else None
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        self._template_source: str | None = template if isinstance(template, str) else None
        self._template: Any = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return {"input_ids": ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return text

    def __len__(self) -> int:
        size: int = self._tok.get_vocab_size(with_added_tokens=True)
        return size

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = False, tokenize: bool = False) -> str:
        """Render the chat template as transformers does (sandboxed Jinja, trimmed blocks)."""
        if tokenize:
            raise ValueError("FastTokenizer renders text only; encode it with __call__")
        if self._template_source is None:
            raise ValueError("this tokenizer has no chat template; use /v1/completions")
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise ValueError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[loopcontrols])
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, sort_keys=False: \
                json.dumps(x, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self._template_source)
        rendered: str = self._template.render(messages=messages,
                                              add_generation_prompt=add_generation_prompt,
                                              **{k: v for k, v in self.special.items() if v})
        return rendered
