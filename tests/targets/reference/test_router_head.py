"""The router's stream head (everything up to the first content event) keeps the events that
came after it in the same read: a worker resumed after a pause sends its backlog in one burst,
and dropping the rest of it cut the stream silently (`[DONE]` without a finish reason), the
first bug `llm-chaos explore` found."""

from __future__ import annotations

import asyncio
import json
import time

from targets.reference.registry import EventBus, Registry, WorkerInfo, WorkerState
from targets.reference.router import Router, RouterSettings, _Flight, _ResumeSteps, _Stream


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


def test_a_stream_whose_resume_fails_lets_its_worker_go_once() -> None:
    """The lost attempt is let go when the resume starts; when no worker takes the stream, the
    relay's end must not let it go a second time (that took the count of another request still
    running on the worker: the router then sent it more than its capacity)."""

    async def run() -> tuple[int, bytes]:
        registry = Registry(EventBus())
        worker = WorkerInfo(id="sim-1", model="sim", port=1, state=WorkerState.DEAD)
        registry.add(worker)
        router = Router(registry, RouterSettings(resume_streams=True, max_attempts=1))
        worker.ongoing = 2  # this stream, and another request on the same worker
        router.in_flight = 1
        flight = _Flight(worker)
        loop = asyncio.get_running_loop()
        stream = _Stream(flight, loop.call_later(60, flight.fail, "deadline"), head=b"",
                         model="sim", started=time.monotonic(), request_id="r",
                         path="/v1/chat/completions", payload={}, tried={"sim-1"},
                         deadline=time.monotonic() + 0.3, trail=None)
        flight.queue.put_nowait(("error", "worker sim-1 lost"))
        sent = b"".join([piece async for piece in router._relay(_ResumeSteps(router, stream))])
        return worker.ongoing, sent

    ongoing, sent = asyncio.run(run())
    assert b"could not resume" in sent
    assert ongoing == 1
