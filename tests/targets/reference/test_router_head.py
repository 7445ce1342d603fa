"""The router's stream head (everything up to the first content event) keeps the events that
came after it in the same read: a worker resumed after a pause sends its backlog in one burst,
and dropping the rest of it cut the stream silently (`[DONE]` without a finish reason), the
first bug `llm-chaos explore` found."""

from __future__ import annotations

import asyncio
import json

from targets.reference.registry import EventBus, Registry, WorkerInfo
from targets.reference.router import Router, RouterSettings, _Flight


def _event(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_a_burst_keeps_every_event_after_the_first_content() -> None:
    burst = (_event({"role": "assistant", "content": ""}) + _event({"content": "one"})
             + _event({"content": " two"}) + _event({}, "stop") + b"data: [DONE]\n\n")

    async def head() -> bytes | str:
        router = Router(Registry(EventBus()), RouterSettings())
        flight = _Flight(WorkerInfo(id="w", model="sim", port=1))
        flight.queue.put_nowait(("data", burst[:-5]))  # the last event arrives in two reads
        return await router._head(flight)

    got = asyncio.run(head())
    assert got == burst[:-5]
