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


def _lost_after(tokens: int, max_tokens: int) -> bytes:
    """What a client gets of a chat stream whose worker was lost after `tokens` tokens, with
    `max_tokens` asked for and no other worker to resume on."""

    async def run() -> bytes:
        registry = Registry(EventBus())
        worker = WorkerInfo(id="sim-1", model="sim", port=1, state=WorkerState.DEAD)
        registry.add(worker)
        router = Router(registry, RouterSettings(resume_streams=True, max_attempts=1))
        worker.ongoing, router.in_flight = 1, 1
        flight = _Flight(worker)
        loop = asyncio.get_running_loop()
        stream = _Stream(flight, loop.call_later(60, flight.fail, "deadline"), head=b"",
                         model="sim", started=time.monotonic(), request_id="r",
                         path="/v1/chat/completions",
                         payload={"model": "sim", "max_tokens": max_tokens, "stream": True},
                         tried={"sim-1"}, deadline=time.monotonic() + 0.3, trail=None)
        steps = _ResumeSteps(router, stream)
        pieces = [_event({"role": "assistant", "content": ""})] + [
            b"data: " + json.dumps({"id": "chatcmpl-1", "choices": [{
                "index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None,
                "token_ids": [i]}]}).encode() + b"\n\n" for i in range(tokens)]
        for piece in pieces:
            flight.queue.put_nowait(("data", piece))
        flight.queue.put_nowait(("error", "worker sim-1 lost"))
        return b"".join([piece async for piece in router._relay(steps)])

    return asyncio.run(run())


def test_a_stream_lost_at_its_token_limit_is_finished_not_resumed() -> None:
    """Killed between its last token and its finish chunk, a stream has nothing left to resume
    (a worker refuses such a resume with a 400): the router ends it as the worker would have,
    finish reason `length`, and `[DONE]`. Seen once in a game day: 1 error of 20 in the kill's
    window burnt the error budget of a target that did nothing wrong."""
    sent = _lost_after(3, max_tokens=3)
    events = [e for e in sent.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    last = json.loads(events[-2].removeprefix(b"data: "))
    assert last["choices"][0]["finish_reason"] == "length" and last["id"] == "chatcmpl-1"
    assert b"error" not in sent
    # one token short, the stream is resumed (here: no worker takes it, so an error frame)
    assert b"could not resume" in _lost_after(2, max_tokens=3)
