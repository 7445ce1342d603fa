"""Requests and outputs exchanged between the worker server and an engine."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["GenerationRequest", "Output", "OutputSink", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (OpenAI's, plus vLLM's `ignore_eos` and `min_tokens`)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Output:
    """What an engine reports for one request after a step: new tokens, text, or the end."""

    request_id: str
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    # time.monotonic() when the engine handed this output over; the simulated engine's truth.
    emitted_at: float = 0.0


OutputSink = Callable[[Output], None]


@dataclass
class GenerationRequest:
    """One request as an engine sees it: prompt token ids (or text for the simulated engine)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: OutputSink
    prompt_text: str = ""
    received_at: float = 0.0
    # a resumed stream: tokens generated before (they count against max_tokens) and the
    # characters of their text that the client already has
    resume_ids: list[int] = field(default_factory=list)
    resume_text_sent: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
