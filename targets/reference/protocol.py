"""The seam between the worker server and its engines (batched model or simulated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .params import GenerationRequest

__all__ = ["Engine", "EngineFull", "Prompt"]


class EngineFull(Exception):
    """The engine's waiting queue is full; the caller answers 429."""


@dataclass(frozen=True)
class Prompt:
    """A prompt ready for an engine: its token ids and the text they came from."""

    token_ids: list[int]
    text: str


class Engine(Protocol):
    """What the worker server needs from an engine (batched model or simulated)."""

    model_name: str
    max_model_len: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def submit(self, request: GenerationRequest) -> None: ...
    def cancel(self, request: GenerationRequest) -> None: ...
    def encode_chat(self, messages: list[dict[str, str]]) -> Prompt: ...
    def encode_text(self, text: str) -> Prompt: ...
    def count_tokens(self, text: str) -> int: ...
    def check_resume(self, token_ids: list[int], text_sent: int) -> str | None: ...
    def stats(self) -> dict[str, Any]: ...
    def healthy(self) -> tuple[bool, str]: ...
