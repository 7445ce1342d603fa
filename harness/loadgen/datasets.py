"""Prompt sets users bring (`--dataset FILE`), in the two shapes load testers share:

- JSON Lines, one prompt per line: a JSON string, `{"prompt": "..."}` or
  `{"messages": [{"role": "user", "content": "..."}, ...]}` (an OpenAI chat);
- ShareGPT JSON (vLLM's and GuideLLM's `sharegpt`): a list of
  `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}, ...]}`, of
  which each conversation's turns up to its first human one are the prompt.

Prompts are drawn with the seeded RNG of the user; their token lengths are measured with the
target's tokenizer when drawn (a ShareGPT file holds ~90,000 conversations). A line or entry
that is neither is a UsageError naming its line or index; empty prompts are refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .prompts import Prompt
from .tokens import TokenCounter

__all__ = ["DatasetPrompts", "load_dataset"]

_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
          "assistant": "assistant", "bing": "assistant", "chatgpt": "assistant"}


def _chat(messages: Any, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: `messages` must be a non-empty list of "
                         '{"role": ..., "content": ...}')
    out = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise UsageError(f"{where}: messages[{i}] must be "
                             '{"role": "user", "content": "..."} with string values')
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def _jsonl_line(item: Any, where: str) -> tuple[dict[str, str], ...]:
    if isinstance(item, str):
        return ({"role": "user", "content": item},)
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return ({"role": "user", "content": item["prompt"]},)
    if isinstance(item, dict) and "messages" in item:
        return _chat(item["messages"], where)
    raise UsageError(f"{where}: expected a JSON string, {{\"prompt\": \"...\"}} or "
                     f"{{\"messages\": [...]}}, got {json.dumps(item)[:80]}")


def _sharegpt(item: Any, where: str) -> tuple[dict[str, str], ...] | None:
    """The prompt of one ShareGPT entry; None for one with no human turn (skipped, as vLLM
    and GuideLLM skip them)."""
    turns = item.get("conversations") if isinstance(item, dict) else None
    if not isinstance(turns, list):
        raise UsageError(f"{where}: a ShareGPT entry needs `conversations`, a list of "
                         '{"from": "human", "value": "..."}')
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("value"), str)
                and turn.get("from") in _ROLES):
            raise UsageError(f"{where}: conversations[{i}] must be {{\"from\": one of "
                             f"{', '.join(sorted(_ROLES))}, \"value\": \"...\"}}")
        role = _ROLES[turn["from"]]
        messages.append({"role": role, "content": turn["value"]})
        if role == "user":
            return tuple(messages)
    return None


def load_dataset(path: Path) -> list[tuple[dict[str, str], ...]]:
    """Every prompt of a JSONL or ShareGPT file (chosen by content: a file whose first
    character is `[` is ShareGPT); UsageError naming what to fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--dataset {path}: cannot read it ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"--dataset {path}: not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from exc
    prompts: list[tuple[dict[str, str], ...]] = []
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--dataset {path}: not valid JSON ({exc})") from exc
        for i, entry in enumerate(entries):
            prompt = _sharegpt(entry, f"--dataset {path}: entry {i}")
            if prompt is not None:
                prompts.append(prompt)
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"--dataset {path}: line {n}"
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{where}: not valid JSON ({exc})") from exc
            prompts.append(_jsonl_line(item, where))
    prompts = [p for p in prompts if any(m["content"].strip() for m in p)]
    if not prompts:
        raise UsageError(f"--dataset {path}: no prompt in it (JSONL: one per line; ShareGPT: "
                         "entries with a human turn)")
    return prompts


class DatasetPrompts:
    """Prompts drawn at random from a user's dataset, measured with the tokenizer."""

    def __init__(self, path: Path, tokenizer: TokenCounter | None) -> None:
        self.path = path
        self.prompts = load_dataset(path)
        self.tokenizer = tokenizer

    def next(self, rng: random.Random) -> Prompt:
        messages = rng.choice(self.prompts)
        if self.tokenizer is None:
            return Prompt(messages)
        return Prompt(messages, sum(self.tokenizer.count(m["content"]) for m in messages),
                      self.tokenizer.count_messages(messages))
