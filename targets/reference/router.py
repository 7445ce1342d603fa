"""The router: one OpenAI-compatible front for a fleet of workers.

Per request: admission (a bounded queue; 429 with Retry-After beyond it), least-outstanding
routing among live workers of the requested model, a deadline, and failover. A request is
retried on another worker while nothing has been sent to the client; the role-only first
chunk of a stream is held back until the first content-bearing event, so a worker that dies
during prefill is still invisible to the client. Once a stream has started, losing its worker
ends it with an error frame and `data: [DONE]`, never with a silent cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect

from .api import (
    INTERNAL_FIELDS,
    INTERNAL_HEADER,
    ApiError,
    check_content_type,
    decode_object,
    error_body,
    read_body,
    sse_data,
)
from .audit import AuditLog, AuditUnavailable, RequestTrail
from .faults import FaultSet
from .registry import Registry, WorkerInfo, WorkerState

__all__ = ["Router", "RouterSettings"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
POOL_IDLE_S = 30  # idle connections to workers: closed by the router before the worker does
_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
            10.0, 20.0, 40.0, 80.0)


@dataclass
class RouterSettings:
    """Request handling limits of the router."""

    request_timeout: float = 120.0
    max_attempts: int = 3
    worker_capacity: int = 16
    max_queue: int = 64
    retry_after_s: int = 1
    resume_streams: bool = False


class _Reject(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.headers = headers or {}

    def response(self, request_id: str) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.status),
                            status_code=self.status,
                            headers={"X-Request-Id": request_id, **self.headers})


class _WorkerLost(Exception):
    pass


class _ClientLeft(Exception):
    """The client disconnected before its answer was ready."""


class _ResumeFailed(Exception):
    pass


class _Truncated(Exception):
    def __init__(self, error_frame: bool) -> None:
        super().__init__("truncated by an injected fault")
        self.error_frame = error_frame


class _Flight:
    """One attempt on one worker: a pump task copies the upstream body into a queue, so the
    supervisor (worker lost) or the deadline can end the attempt from outside."""

    def __init__(self, worker: WorkerInfo) -> None:
        self.worker = worker
        self.queue: asyncio.Queue[tuple[str, bytes | str]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.closed = False  # let go: its worker's count of ongoing requests taken back

    def fail(self, why: str) -> None:
        if self.task is not None:
            self.task.cancel()
        self.queue.put_nowait(("error", why))


def _sse_events(buffer: bytearray) -> list[bytes]:
    """Split complete SSE events off the front of `buffer` (only the first few events of a
    stream are parsed, to find the first content-bearing one; the rest is relayed raw)."""
    events: list[bytes] = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return events
        events.append(bytes(buffer[:end]))
        del buffer[: end + 2]


def _commits(event: bytes) -> bool:
    """Whether an SSE event is worth sending (content, a finish, an error or the end)."""
    for data in sse_data(event):
        if data == b"[DONE]":
            return True
        try:
            payload = json.loads(data)
        except ValueError:
            return True
        if "error" in payload:
            return True
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text") or choice.get("finish_reason"):
                return True
    return False


@dataclass
class _Stream:
    """A started stream, from its head to its end: the attempt feeding it (a resumed stream
    swaps in the next one) and the request it answers, which a resume asks again."""

    flight: _Flight
    timer: asyncio.TimerHandle  # ends the attempt at the request's deadline
    head: bytes  # held back until the first content-bearing event: the first bytes to send
    model: str
    started: float
    request_id: str
    path: str
    payload: dict[str, Any]
    deadline: float
    tried: set[str]
    trail: RequestTrail | None


class _Steps:
    """What a stream's relay (`Router._relay`) sends, and when; these steps forward the
    worker's bytes as they come. The relay reads the chunks, ends a failed stream and lets
    its attempt go; `_AuditSteps` and `_ResumeSteps` change what goes out in between."""

    def __init__(self, router: Router, stream: _Stream) -> None:
        self.router, self.stream = router, stream
        self.done = False  # the stream's end went out: the relay reads no further
        self.tokens = 0  # content events sent, counted for the truncate fault
        self.tail = b""  # the last bytes sent: whether the worker sent its `[DONE]`

    def begin(self) -> None:
        """The first bytes are about to go out."""

    async def forward(self, received: bytes) -> AsyncIterator[bytes]:
        """What the client is sent for a chunk of the worker's stream (the head first)."""
        self.tail = (self.tail + received)[-512:]
        async for piece in self.send(received):
            yield piece

    async def lost(self, why: str, ended: bool) -> list[bytes] | None:
        """The worker's stream stopped (`ended`: it closed, else it failed) before `done`: the
        frames that end the client's stream, or None where the stream goes on."""
        if ended and b"[DONE]" in self.tail:
            self.router.m_success.labels(self.stream.model, _finish_reason(self.tail)).inc()
            return []
        self.router.m_cut.inc()
        if ended:  # the worker closed without its end marker: never a silent cut
            return [_error_frame(why)]
        # close a half-sent event before the error frame
        return ([] if self.tail.endswith(b"\n\n") else [b"\n\n"]) + [_error_frame(why)]

    async def record(self, type_: str, error: str) -> None:
        """Write the terminal record of a stream the relay ends with an error (none here)."""

    def abandon(self) -> None:
        """The relay ends, perhaps before the stream did (the client left)."""

    async def send(self, chunk: bytes) -> AsyncIterator[bytes]:
        """`chunk` as it is, or event by event under the slow_tokens / truncate faults."""
        faults = self.router.faults
        if not (faults.faults and (faults.token_delay() or faults.truncate())):
            yield chunk
            return
        buffer = bytearray(chunk)
        for event in _sse_events(buffer):
            if _commits(event) and b"[DONE]" not in event:
                delay = faults.token_delay()
                if delay:
                    await asyncio.sleep(delay)
                self.tokens += 1
            cut = faults.truncate()
            if cut is not None and self.tokens > cut[0]:
                raise _Truncated(cut[1])
            yield event + b"\n\n"
        if buffer:
            yield bytes(buffer)


class _AuditSteps(_Steps):
    """Whole events only, and `data: [DONE]` held back until the request's terminal record is
    durable. Chunks go out whole as they come (up to their last complete event); the text
    sent is parsed once, at the end, from the bytes kept."""

    def __init__(self, router: Router, stream: _Stream, trail: RequestTrail) -> None:
        super().__init__(router, stream)
        self.trail = trail
        self.sent: list[bytes] = []
        self.pending = bytearray()

    def begin(self) -> None:
        self.trail.first_content = time.monotonic()  # the head ends with the first content event

    async def forward(self, received: bytes) -> AsyncIterator[bytes]:
        self.pending += received
        cut = self.pending.rfind(b"\n\n") + 2
        if cut < 2:
            return
        ready = bytes(self.pending[:cut])
        del self.pending[:cut]
        self.sent.append(ready)  # as the worker sent it: usage included
        if self.trail.strip_usage:  # usage was asked upstream for the record only
            ready = ready.replace(b',"usage":null', b"")
            if b'"choices":[]' in ready:
                ready = b"".join(e + b"\n\n" for e in _sse_events(bytearray(ready))
                                 if b'"choices":[]' not in e)
        done_at = ready.find(b"data: [DONE]")
        if done_at < 0:
            async for piece in self.send(ready):
                yield piece
            return
        if done_at:
            yield ready[:done_at]
        self.trail.observe_stream(b"".join(self.sent))
        if self.trail.error is not None:
            self.router.m_cut.inc()
            await self.trail.finish("failed", http_status=200)
        else:
            await self.trail.finish("completed", http_status=200)
            self.router.m_success.labels(self.stream.model,
                                         self.trail.finish_reason or "unknown").inc()
        self.done = True
        yield b"data: [DONE]\n\n"

    async def lost(self, why: str, ended: bool) -> list[bytes] | None:
        self.router.m_cut.inc()
        await self.record("timeout" if why == "deadline exceeded" else "failed", why)
        return [_error_frame(why)]

    async def record(self, type_: str, error: str) -> None:
        self.trail.observe_stream(b"".join(self.sent))
        await self.trail.finish(type_, error=error, http_status=200)

    def abandon(self) -> None:
        if not self.trail.finished:
            self.trail.observe_stream(b"".join(self.sent))
            self.trail.abandon("cancelled", "client disconnected")


class _ResumeSteps(_Steps):
    """Event by event, keeping the stream's checkpoint (token ids, characters sent); when the
    worker is lost, the same stream goes on from another worker. The audit trail, if any,
    takes in each chunk as it goes."""

    def __init__(self, router: Router, stream: _Stream) -> None:
        super().__init__(router, stream)
        self.checkpoint: list[int] = []
        self.sent_chars = 0
        self.stream_id: str | None = None
        self.buffer = bytearray()
        self.resumes = 0

    async def forward(self, received: bytes) -> AsyncIterator[bytes]:
        trail = self.stream.trail
        self.buffer += received
        for event in _sse_events(self.buffer):
            data = event[5:].strip() if event.startswith(b"data:") else b""
            if data == b"[DONE]":
                if trail is not None:
                    await trail.finish("completed", http_status=200)
                self.router.m_success.labels(self.stream.model, "stop").inc()
                self.done = True
                yield b"data: [DONE]\n\n"
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if "error" in chunk:
                await self.lost(f"worker error: {chunk['error'].get('message')}", ended=False)
                return
            self.stream_id = self.stream_id or chunk.get("id")
            chunk["id"] = self.stream_id
            if trail is not None:
                trail.observe_chunk(chunk)
                if trail.strip_usage and chunk.pop("usage", None) is not None \
                        and not chunk.get("choices"):
                    continue
            keep = bool(chunk.get("usage"))
            for choice in chunk.get("choices") or []:
                self.checkpoint.extend(choice.pop("token_ids", None) or [])
                delta = choice.get("delta") or {}
                text = delta.get("content") or choice.get("text") or ""
                self.sent_chars += len(text)
                role_only = "role" in delta and self.resumes > 0
                if (text or choice.get("finish_reason") or "role" in delta) and not role_only:
                    keep = True
            if keep:
                yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    async def lost(self, why: str, ended: bool) -> list[bytes] | None:
        """The worker is gone (or failed): go on from the checkpoint on another one; raises
        _ResumeFailed where none takes the stream. A stream that had every token it asked for
        (lost between its last token and its finish) is finished here: nothing is left to
        resume, and a worker refuses to."""
        router, stream = self.router, self.stream
        await router._close(stream.flight)
        stream.timer.cancel()
        limit = _token_limit(stream.payload)
        if limit is not None and len(self.checkpoint) >= limit:
            return await self._finish_at_limit()
        router.events_resume(stream.model, why)
        stream.flight, stream.timer = await router._resume(stream, self.checkpoint,
                                                           self.sent_chars, why)
        self.buffer.clear()  # the lost worker's unfinished event
        self.resumes += 1
        if stream.trail is not None:
            stream.trail.attempt(stream.flight.worker.id)
        return None

    async def _finish_at_limit(self) -> list[bytes]:
        """The frames that end a stream at its token limit: its last chunk (finish reason
        `length`, as the worker would have sent) and `[DONE]`; the stream is completed."""
        stream = self.stream
        chat = stream.path.endswith("/chat/completions")
        choice: dict[str, Any] = {"index": 0, **({"delta": {}} if chat else {"text": ""}),
                                  "finish_reason": "length"}
        chunk = {"id": self.stream_id, "object": "chat.completion.chunk" if chat
                 else "text_completion", "created": int(time.time()),
                 "model": stream.model, "choices": [choice]}
        if stream.trail is not None:
            stream.trail.observe_chunk(chunk)
            await stream.trail.finish("completed", http_status=200)
        self.router.m_success.labels(stream.model, "length").inc()
        self.done = True
        return [b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n",
                b"data: [DONE]\n\n"]

    async def record(self, type_: str, error: str) -> None:
        if self.stream.trail is not None:
            await self.stream.trail.finish(type_, error=error, http_status=200)

    def abandon(self) -> None:
        if self.stream.trail is not None:
            self.stream.trail.abandon("cancelled", "client disconnected")


class Router:
    """Routes OpenAI requests to the fleet's workers."""

    def __init__(self, registry: Registry, settings: RouterSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._client: aiohttp.ClientSession | None = None
        self.queued: dict[str, int] = {}
        self.in_flight = 0
        self.draining = False
        self.faults = FaultSet()
        self._flights: dict[str, set[_Flight]] = {}
        self.audit: AuditLog | None = None  # set by the fleet with --audit-log
        # the fleet's secret: sent to workers, it lets them take the router's internal fields
        self.internal_token = ""
        r = self.metrics_registry = CollectorRegistry()
        self.m_requests = Counter("llm_chaos_router_requests", "Requests by final HTTP status",
                                  ["status"], registry=r)
        self.m_retries = Counter("llm_chaos_router_retries", "Attempts retried on another worker",
                                 registry=r)
        self.m_cut = Counter("llm_chaos_router_stream_failures",
                             "Started streams ended with an error frame (worker lost)",
                             registry=r)
        self.m_resumed = Counter("llm_chaos_router_stream_resumes",
                                 "Streams continued on another worker from their checkpoint",
                                 registry=r)
        self.m_rejected = Counter("llm_chaos_router_rejections", "Requests refused",
                                  ["reason"], registry=r)
        self.m_ttft = Histogram("vllm:time_to_first_token_seconds", "Router-observed TTFT",
                                ["model_name"], buckets=_BUCKETS, registry=r)
        self.m_e2e = Histogram("vllm:e2e_request_latency_seconds", "Router-observed latency",
                               ["model_name"], buckets=_BUCKETS, registry=r)
        self.m_success = Counter("vllm:request_success", "Finished requests",
                                 ["model_name", "finished_reason"], registry=r)
        running = Gauge("vllm:num_requests_running", "Requests on workers", registry=r)
        running.set_function(lambda: sum(w.ongoing for w in registry.workers.values()))
        waiting = Gauge("vllm:num_requests_waiting", "Requests queued in the router", registry=r)
        waiting.set_function(lambda: sum(self.queued.values()))

    # -- worker loss (called by the supervisor) -----------------------------------------------

    def worker_lost(self, worker: WorkerInfo, why: str) -> None:
        for flight in list(self._flights.get(worker.id, ())):
            flight.fail(f"worker {worker.id} lost: {why}")

    # -- admission ----------------------------------------------------------------------------

    def _take(self, model: str, exclude: set[str]) -> WorkerInfo | None:
        """A worker with room now, one not in `exclude` first, or None."""
        worker = self.registry.pick(model, self.settings.worker_capacity, exclude)
        if worker is None and exclude:
            # every other worker was tried: a restarted one may be back
            worker = self.registry.pick(model, self.settings.worker_capacity)
        if worker is not None:
            worker.ongoing += 1
        return worker

    async def _acquire(self, model: str, deadline: float, exclude: set[str]) -> WorkerInfo:
        """A worker with room, waiting in the router's queue (to the deadline) if none has."""
        worker = self._take(model, exclude)
        if worker is not None:
            return worker
        if sum(self.queued.values()) >= self.settings.max_queue:
            self.m_rejected.labels("queue_full").inc()
            raise _Reject(429, f"all workers are busy and {self.settings.max_queue} requests "
                          "are queued; retry later", "rate_limit_error",
                          headers={"Retry-After": str(self.settings.retry_after_s)})
        self.queued[model] = self.queued.get(model, 0) + 1
        try:
            while True:
                changed = self.registry.changed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Reject(504, "no worker became available before the request's "
                                  "deadline", "timeout_error")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, 0.25))
                worker = self._take(model, exclude)
                if worker is not None:
                    return worker
        finally:
            self.queued[model] -= 1

    def _release(self, worker: WorkerInfo) -> None:
        worker.ongoing = max(0, worker.ongoing - 1)
        self.registry.release()

    # -- one attempt --------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        # aiohttp, not httpx, upstream: its C parser costs a fraction of httpx's per request,
        # and this hop is the router's whole overhead on time to first token
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_IDLE_S),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0),
                auto_decompress=False)
        return self._client

    async def _start(self, worker: WorkerInfo, path: str, body: bytes, request_id: str
                     ) -> tuple[_Flight, int]:
        """Send one attempt; return once the worker answered its status line."""
        flight = _Flight(worker)
        self._flights.setdefault(worker.id, set()).add(flight)
        session = self._session()
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self.internal_token:
            headers[INTERNAL_HEADER] = self.internal_token

        async def attempt() -> None:
            try:
                async with session.post(worker.url + path, data=body, headers=headers) as resp:
                    flight.queue.put_nowait(("status", str(resp.status)))
                    async for chunk in resp.content.iter_any():
                        flight.queue.put_nowait(("data", chunk))
                flight.queue.put_nowait(("end", b""))
            except aiohttp.ClientConnectorError as exc:
                flight.queue.put_nowait(("refused", f"worker {worker.id} refused the "
                                                    f"connection: {exc.os_error}"))
            except (aiohttp.ClientError, OSError) as exc:
                flight.queue.put_nowait(("error", f"worker {worker.id} connection lost: "
                                                  f"{type(exc).__name__}"))

        flight.task = asyncio.create_task(attempt())
        try:
            kind, value = await flight.queue.get()
        except asyncio.CancelledError:  # the client left, or the router stops
            self._end(flight)
            raise
        if kind != "status":
            self._end(flight)
            if kind == "refused" and worker.state == WorkerState.LIVE:
                # dead or dying: out of the routing set now, before the supervisor's next probe
                self.registry.set_state(worker, WorkerState.UNLIVE, "refused a connection")
            raise _WorkerLost(str(value) or f"worker {worker.id} closed the connection")
        return flight, int(value)

    def _end(self, flight: _Flight) -> None:
        self._flights.get(flight.worker.id, set()).discard(flight)
        if flight.task is not None:
            flight.task.cancel()

    async def _close(self, flight: _Flight) -> None:
        """Let an attempt go, once: a stream whose resume failed still holds the lost attempt
        (let go when the resume began) when its relay ends."""
        if flight.closed:
            return
        flight.closed = True
        self._end(flight)  # cancelling the attempt closes its unfinished upstream response
        self._release(flight.worker)

    # -- the request --------------------------------------------------------------------------

    async def handle(self, request: Request, path: str) -> Response:
        """Admit, route and relay one OpenAI request."""
        request_id = request.headers.get("x-request-id", "").strip()[:200] or str(uuid.uuid4())
        started = time.monotonic()
        body = b""
        payload: dict[str, Any] | ApiError
        try:
            body = await read_body(request)
            check_content_type(request.headers.get("content-type"))
            payload = decode_object(body)  # once: the audit record and the routing share it
        except ApiError as exc:
            payload = exc  # refused below, after its `accepted` record
        except ClientDisconnect:
            # gone before its request was whole: nothing was asked, nothing to record
            print(f"router: client left before sending all of request {request_id}",
                  file=sys.stderr, flush=True)
            return Response(status_code=499)
        if self.audit is not None:
            return await self._handle_audited(request, path, body, payload, request_id,
                                              started, self.audit)
        try:
            response = await self._handle(request, path, body, payload, request_id, started)
        except _Reject as exc:
            self.m_requests.labels(str(exc.status)).inc()
            return exc.response(request_id)
        return response

    async def _handle_audited(self, request: Request, path: str, body: bytes,
                              payload: dict[str, Any] | ApiError, request_id: str,
                              started: float, audit: AuditLog) -> Response:
        """`_handle` between an `accepted` record and exactly one durable terminal one."""
        client = f"{request.client.host}:{request.client.port}" if request.client else None
        try:
            trail = audit.accept(request_id, path, body, client,
                                 payload=None if isinstance(payload, ApiError) else payload)
        except AuditUnavailable as exc:
            self.m_rejected.labels("audit_unavailable").inc()
            self.m_requests.labels("503").inc()
            return _audit_unavailable(request_id, exc)
        try:
            response = await self._handle(request, path, body, payload, request_id, started,
                                          trail)
        except _Reject as exc:
            self.m_requests.labels(str(exc.status)).inc()
            kind = ("timeout" if exc.status == 504 else "failed" if exc.status >= 500 and
                    exc.status != 503 else "rejected")
            try:
                await trail.finish(kind, error=exc.message, http_status=exc.status)
            except AuditUnavailable as unavailable:
                return _audit_unavailable(request_id, unavailable)
            return exc.response(request_id)
        except AuditUnavailable as exc:
            self.m_requests.labels("503").inc()
            return _audit_unavailable(request_id, exc)
        except asyncio.CancelledError:
            trail.abandon("cancelled", "client disconnected")
            raise
        except Exception as exc:
            trail.abandon("failed", f"router error: {type(exc).__name__}: {exc}")
            raise
        return response

    async def _handle(self, request: Request, path: str, body: bytes,
                      payload: dict[str, Any] | ApiError, request_id: str, started: float,
                      trail: RequestTrail | None = None) -> Response:
        if self.draining:
            self.m_rejected.labels("draining").inc()
            raise _Reject(503, "the server is shutting down; retry on another instance",
                          "service_unavailable", headers={"Retry-After": "1"})
        if isinstance(payload, ApiError):
            raise _Reject(payload.status, payload.message, payload.type, payload.param)
        rewritten = False  # the body goes upstream as sent unless the router changes it
        if any(name in payload for name in INTERNAL_FIELDS):
            # the router's own fields (it resumes streams with them): never a client's
            for name in INTERNAL_FIELDS:
                payload.pop(name, None)
            rewritten = True
        options = payload.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise _Reject(400, "stream_options: must be an object, such as "
                          '{"include_usage": true}', param="stream_options")
        model = payload.get("model")
        if not isinstance(model, str) or model not in self.registry.models():
            raise _Reject(404, f"The model `{model}` does not exist; this server serves "
                          f"{', '.join(self.registry.models())}", "not_found_error", "model")
        stream = payload.get("stream") is True
        deadline = started + self.settings.request_timeout
        await self._router_faults(deadline)
        resumable = stream and self.settings.resume_streams
        if resumable:
            payload["return_token_ids"] = True
            rewritten = True
        if trail is not None and stream and not (payload.get("stream_options") or {}).get(
                "include_usage"):
            # token counts for the record: asked upstream, taken out before the client
            trail.strip_usage = True
            payload["stream_options"] = {**(payload.get("stream_options") or {}),
                                         "include_usage": True}
            rewritten = True
        if rewritten:  # encoded once, whatever changed
            body = json.dumps(payload).encode()
        tried: set[str] = set()
        last_error = "no attempt"
        self.in_flight += 1
        handed_off = False
        # an answer is whole before it is sent: a client that leaves meanwhile must not keep
        # its worker busy to the end (a stream's relay sees the disconnect by itself)
        left = None if stream else asyncio.ensure_future(_disconnected(request))
        try:
            for attempt in range(1, self.settings.max_attempts + 1):
                if attempt > 1:
                    self.m_retries.inc()
                worker = self._take(model, tried)  # no task to race when one has room now
                if worker is None:
                    worker = await _unless_left(self._acquire(model, deadline, tried), left,
                                                self._release)
                tried.add(worker.id)
                if trail is not None:
                    trail.attempt(worker.id)
                try:
                    flight, status = await _unless_left(
                        self._start(worker, path, body, request_id), left,
                        lambda started_flight: self._end(started_flight[0]))
                except _WorkerLost as exc:
                    last_error = str(exc)
                    self._release(worker)
                    await asyncio.sleep(0.05)  # let the registry catch up with a dead worker
                    continue
                except _ClientLeft:
                    self._release(worker)
                    raise
                timer = asyncio.get_running_loop().call_at(
                    asyncio.get_running_loop().time() + (deadline - time.monotonic()),
                    flight.fail, "deadline exceeded")
                if status >= 500 or status == 429:
                    last_error = f"worker {worker.id} answered {status}"
                    timer.cancel()
                    await self._close(flight)
                    continue
                if status != 200:
                    timer.cancel()
                    data = await self._collect(flight)
                    await self._close(flight)
                    self.m_requests.labels(str(status)).inc()
                    if trail is not None:
                        await trail.finish("rejected", http_status=status,
                                           error=_error_message(data))
                    return Response(data if isinstance(data, bytes) else b"",
                                    status_code=status,
                                    media_type="application/json",
                                    headers={"X-Request-Id": request_id})
                if stream:
                    head = await self._head(flight)
                    if isinstance(head, str):
                        last_error = head
                        timer.cancel()
                        await self._close(flight)
                        continue
                    self.m_requests.labels("200").inc()
                    handed_off = True
                    started_stream = _Stream(flight, timer, head, model, started, request_id,
                                             path, payload, deadline, tried, trail)
                    steps = (_ResumeSteps(self, started_stream) if resumable else
                             _AuditSteps(self, started_stream, trail) if trail is not None else
                             _Steps(self, started_stream))
                    return StreamingResponse(
                        self._relay(steps),
                        media_type="text/event-stream",
                        headers={**SSE_HEADERS, "X-Request-Id": request_id})
                data = await self._collect(flight, left)
                timer.cancel()
                await self._close(flight)
                if isinstance(data, str):
                    last_error = data
                    if data == "client disconnected":
                        raise _ClientLeft
                    continue
                if trail is not None:
                    trail.observe_body(data)
                    await trail.finish("completed", http_status=200)
                self.m_requests.labels("200").inc()
                self.m_e2e.labels(model).observe(time.monotonic() - started)
                self.m_success.labels(model, _finish_reason(data[-512:])).inc()
                return Response(data, media_type="application/json",
                                headers={"X-Request-Id": request_id})
            raise _Reject(502 if "deadline" not in last_error else 504,
                          f"request failed after {self.settings.max_attempts} attempt(s) "
                          f"on {len(tried)} worker(s): {last_error}",
                          "server_error")
        except _ClientLeft:
            print(f"router: client left before the answer to request {request_id} was ready",
                  file=sys.stderr, flush=True)
            self.m_requests.labels("499").inc()
            if trail is not None:
                trail.abandon("cancelled", "client disconnected")
            return Response(status_code=499)
        finally:
            if left is not None:
                left.cancel()
            if not handed_off:
                self.in_flight -= 1

    async def _router_faults(self, deadline: float) -> None:
        """Faults injected into the router itself (admin API, target `router`)."""
        injected = self.faults.error()
        if injected is not None:
            raise _Reject(injected[0], injected[1], "server_error")
        if self.faults.active("hang"):
            try:
                await asyncio.wait_for(self.faults.hang(), max(0.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise _Reject(504, "deadline exceeded (router hang fault)",
                              "timeout_error") from exc
        delay = self.faults.latency()
        if delay:
            await asyncio.sleep(delay)

    async def _collect(self, flight: _Flight, left: asyncio.Future[None] | None = None
                       ) -> bytes | str:
        """The whole upstream body, or a string saying why there is none (`left`: done once
        the client disconnected, which ends the wait)."""
        parts: list[bytes] = []
        while True:
            try:
                kind, value = await _unless_left(flight.queue.get(), left)
            except _ClientLeft:
                return "client disconnected"
            if kind == "data":
                parts.append(value if isinstance(value, bytes) else b"")
            elif kind == "end":
                return b"".join(parts) if left is None or not left.done() else \
                    "client disconnected"  # whole, but no one is left to take it
            else:
                return str(value)

    async def _head(self, flight: _Flight) -> bytes | str:
        """Read a stream until its first content-bearing event; bytes to send, or why not."""
        buffer = bytearray()
        sent = bytearray()
        while True:
            kind, value = await flight.queue.get()
            if kind == "data":
                assert isinstance(value, bytes)
                buffer += value
                events = _sse_events(buffer)
                for i, event in enumerate(events):
                    sent += event + b"\n\n"
                    if _commits(event):
                        # the events after it came in the same read (a burst, e.g. from a
                        # worker resumed after a pause): they are part of the head too
                        rest = b"".join(e + b"\n\n" for e in events[i + 1:])
                        return bytes(sent) + rest + bytes(buffer)
            elif kind == "end":
                return "worker closed the stream before any content"
            else:
                return str(value)

    async def _relay(self, steps: _Steps) -> AsyncIterator[bytes]:
        """The one relay of a started stream: its head, then the worker's chunks, each sent
        through `steps`. A stream that cannot finish ends with an error frame (a silent cut
        only where the truncate fault asks for one); its attempt always ends with it."""
        stream = steps.stream
        self.m_ttft.labels(stream.model).observe(time.monotonic() - stream.started)
        steps.begin()
        try:
            received = stream.head
            while True:
                async for piece in steps.forward(received):
                    yield piece
                if steps.done:
                    return
                kind, value = await stream.flight.queue.get()
                if kind == "data":
                    assert isinstance(value, bytes)
                    received = value
                    continue
                ending = await steps.lost(
                    "stream ended without [DONE]" if kind == "end" else str(value),
                    ended=kind == "end")
                if ending is None:  # it goes on from another worker
                    received = b""
                    continue
                for piece in ending:
                    yield piece
                return
        except _Truncated as cut:
            self.m_cut.inc()
            await steps.record("failed", "stream truncated by an injected fault"
                               + ("" if cut.error_frame else " (no error frame)"))
            if cut.error_frame:
                yield _error_frame("stream truncated by an injected fault")
            # without an error frame the connection just ends: the silent cut a checker must catch
        except _ResumeFailed as exc:
            self.m_cut.inc()
            await steps.record("timeout" if "deadline" in str(exc) else "failed", str(exc))
            yield _error_frame(str(exc))
        except AuditUnavailable as exc:
            # the text went out, but not its end: the client sees an unfinished stream
            yield _error_frame(f"the audit log is unavailable ({exc}); this response was "
                               "not recorded and is withdrawn")
        finally:
            steps.abandon()  # the client left (or the router stops), unless it ended
            stream.timer.cancel()
            self.in_flight -= 1
            self.m_e2e.labels(stream.model).observe(time.monotonic() - stream.started)
            await self._close(stream.flight)

    def events_resume(self, model: str, why: str) -> None:
        self.m_resumed.inc()

    async def _resume(self, stream: _Stream, checkpoint: list[int], sent_chars: int, why: str
                      ) -> tuple[_Flight, asyncio.TimerHandle]:
        """A new attempt that continues `stream` from its checkpoint, with its deadline timer."""
        body = json.dumps({**stream.payload, "continuation": {"token_ids": checkpoint,
                                                             "text_sent": sent_chars}}).encode()
        for _ in range(self.settings.max_attempts):
            if time.monotonic() >= stream.deadline:
                break
            try:
                worker = await self._acquire(stream.model, stream.deadline, stream.tried)
            except _Reject as exc:
                raise _ResumeFailed(f"{why}; could not resume: {exc.message}") from exc
            stream.tried.add(worker.id)
            try:
                flight, status = await self._start(worker, stream.path, body, stream.request_id)
            except _WorkerLost as exc:
                self._release(worker)
                why = str(exc)
                await asyncio.sleep(0.05)  # let the registry catch up with a dead worker
                continue
            if status != 200:
                why = f"worker {worker.id} answered {status} to the resume"
                await self._close(flight)
                continue
            loop = asyncio.get_running_loop()
            timer = loop.call_at(loop.time() + (stream.deadline - time.monotonic()),
                                 flight.fail, "deadline exceeded")
            return flight, timer
        raise _ResumeFailed(f"{why}; could not resume the stream")

    def live_summary(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for w in self.registry.workers.values():
            states[w.state] = states.get(w.state, 0) + 1
        return states

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def _token_limit(payload: dict[str, Any]) -> int | None:
    """The most tokens a request may generate, as it states it (None: up to the context)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _finish_reason(tail: bytes) -> str:
    found = re.findall(rb'"finish_reason":"(\w+)"', tail)
    return found[-1].decode() if found else "unknown"


def _error_message(body: bytes | str) -> str:
    if isinstance(body, str):
        return body
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def _audit_unavailable(request_id: str, exc: AuditUnavailable) -> JSONResponse:
    return _Reject(503, f"the audit log is unavailable ({exc}); requests are refused until "
                   "it is fixed (the router fails closed)", "service_unavailable",
                   headers={"Retry-After": "5"}).response(request_id)


def _error_frame(message: str) -> bytes:
    body = error_body(message, "server_error", code=502)
    return (f"data: {json.dumps(body, separators=(',', ':'))}\n\n" "data: [DONE]\n\n").encode()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


_T = TypeVar("_T")


async def _unless_left(work: Awaitable[_T], left: asyncio.Future[None] | None,
                       undo: Callable[[_T], object] | None = None) -> _T:
    """`await work`, or raise _ClientLeft once `left` is done (the client disconnected) and
    cancel the work; `undo` takes back a result the work produced as it was cancelled."""
    if left is None:
        return await work
    if left.done():
        if asyncio.iscoroutine(work):
            work.close()
        raise _ClientLeft
    task = asyncio.ensure_future(work)

    def take_back(done: asyncio.Future[_T]) -> None:  # it finished as it was given up
        if undo is not None and not done.cancelled() and done.exception() is None:
            undo(done.result())

    waits: set[asyncio.Future[Any]] = {task, left}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the router stops: the work goes too
        task.cancel()
        task.add_done_callback(take_back)
        raise
    if not left.done():
        return task.result()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    take_back(task)
    raise _ClientLeft


