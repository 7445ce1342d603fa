"""The seam between the worker server and its engines (batched model or simulated)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

from .params import GenerationRequest

__all__ = ["Engine", "EngineFull", "EngineThread", "Prompt"]


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


class EngineThread:
    """An engine's scheduler thread and the condition it sleeps on, shared by both engines:
    `start` runs `_loop` in the thread, `stop` wakes it to end (it returns once `_stopping`
    is set), `cancel` wakes it to drop a request."""

    thread_name = "engine"
    join_timeout = 10.0  # seconds `stop` waits for the thread (its current step)

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout)

    def cancel(self, request: GenerationRequest) -> None:
        request.cancelled.set()
        with self._cond:
            self._cond.notify()

    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
