"""The worker's generation service: one OpenAI request from its HTTP body to the engine and back.

It parses and validates the body (model, context length, sampling), applies the admin API's
injected faults, submits the request to the engine and encodes the engine's outputs either as
an SSE stream or as one JSON answer. A bad request is an `ApiError`, answered as OpenAI does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from .api import (
    INTERNAL_HEADER,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    Continuation,
    check_content_type,
    decode_object,
    error_body,
    read_body,
    validation_message,
)
from .faults import FaultSet
from .metrics import WorkerMetrics
from .params import GenerationRequest, Output, SamplingParams
from .protocol import Engine, EngineFull, Prompt

__all__ = ["GenerationService"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_Body = ChatCompletionRequest | CompletionRequest
_B = TypeVar("_B", ChatCompletionRequest, CompletionRequest)


def _sse(payload: dict[str, Any] | str) -> bytes:
    # OpenAI's stream is plain `data:` lines; no event names, ids or retries to frame.
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "").strip()
    return given[:200] if given else str(uuid.uuid4())


def _error_response(exc: ApiError, request_id: str | None = None) -> JSONResponse:
    headers = {"X-Request-Id": request_id} if request_id else {}
    if exc.status == 429:
        headers["Retry-After"] = "1"
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code),
                        status_code=exc.status, headers=headers)


def _usage(out: Output) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}


class _Delivery:
    """Hands engine outputs from the engine's thread to the event loop, one wake-up per burst.

    A wake-up is a write to the loop's self-pipe, which releases the GIL; one per token would
    let the loop run between the tokens of a single engine step and delay the rest.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Output], Output]] = []

    def put(self, queue: asyncio.Queue[Output], output: Output) -> None:
        with self._lock:
            self._pending.append((queue, output))
            wake = len(self._pending) == 1
        if wake:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, output in pending:
            queue.put_nowait(output)


class _Call:
    """One generation request in flight: its engine request and the queue of its outputs."""

    def __init__(self, request_id: str, prompt: Prompt, params: SamplingParams,
                 delivery: _Delivery) -> None:
        self.delivery = delivery
        self.queue: asyncio.Queue[Output] = asyncio.Queue()
        self.started = time.monotonic()
        self.engine_request = GenerationRequest(
            request_id=request_id,
            prompt_ids=prompt.token_ids,
            params=params,
            sink=self._sink,
            prompt_text=prompt.text,
            received_at=self.started,
        )
        self.finished = False

    def _sink(self, output: Output) -> None:
        self.delivery.put(self.queue, output)


@dataclass(frozen=True)
class _Chunks:
    """The SSE frames of one streamed answer: its id, creation time and the fields it echoes."""

    id: str
    created: int
    model: str
    fingerprint: str
    chat: bool
    usage_requested: bool
    return_token_ids: bool

    @property
    def object_type(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def delta(self, delta: dict[str, Any] | str, finish: str | None,
              token_ids: tuple[int, ...] = ()) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        choice["logprobs"] = None
        choice["finish_reason"] = finish
        if self.return_token_ids and token_ids:
            choice["token_ids"] = list(token_ids)
        out = {"id": self.id, "object": self.object_type, "created": self.created,
               "model": self.model, "system_fingerprint": self.fingerprint, "choices": [choice]}
        if self.usage_requested:
            out["usage"] = None
        return _sse(out)

    def usage(self, out: Output) -> bytes:
        return _sse({"id": self.id, "object": self.object_type, "created": self.created,
                     "model": self.model, "system_fingerprint": self.fingerprint,
                     "choices": [], "usage": _usage(out)})


class GenerationService:
    """The worker's generation path: the engine, the names it is served under, the injected
    faults, and the parsing, validation and encoding of every completion request."""

    def __init__(self, engine: Engine, names: list[str], metrics: WorkerMetrics,
                 faults: FaultSet, internal_token: str) -> None:
        self.engine = engine
        self.names = names
        self.metrics = metrics
        self.faults = faults
        self.internal_token = internal_token
        # OpenAI's system_fingerprint names the backend configuration that produced an answer.
        self.fingerprint = "fp_" + hashlib.sha256(
            f"{engine.model_name}/{engine.max_model_len}".encode()).hexdigest()[:10]
        # created on the first request, on the event loop that serves it
        self._delivery: _Delivery | None = None

    async def generate(self, request: Request, chat: bool) -> Response:
        """Answer one /v1/chat/completions (`chat`) or /v1/completions request."""
        request_id = _request_id(request)
        try:
            body, call = await self._admit(request, request_id, chat)
        except ApiError as exc:
            self.metrics.rejected.labels(self.names[0], str(exc.status)).inc()
            return _error_response(exc, request_id)
        if body.stream:
            return StreamingResponse(self._stream(call, body), media_type="text/event-stream",
                                     headers={**SSE_HEADERS, "X-Request-Id": request_id})
        return await self._complete(request, call, body)

    # -- from the request to the engine -------------------------------------------------------

    async def _admit(self, request: Request, request_id: str,
                     chat: bool) -> tuple[_Body, _Call]:
        body: _Body
        if chat:
            body = await self._parse(request, ChatCompletionRequest)
            self._check_model(body.model)
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            self._guard_size("".join(m["content"] for m in messages), "messages")
            prompt = self.engine.encode_chat(messages)
        else:
            body = await self._parse(request, CompletionRequest)
            self._check_model(body.model)
            self._guard_size(body.text(), "prompt")
            prompt = self.engine.encode_text(body.text())
        params = self._sampling(body, prompt, body.limit())
        await self._injected_faults()
        if self._delivery is None:
            self._delivery = _Delivery(asyncio.get_running_loop())
        call = _Call(request_id, prompt, params, self._delivery)
        if body.continuation is not None:
            call.engine_request.resume_ids = list(body.continuation.token_ids)
            call.engine_request.resume_text_sent = body.continuation.text_sent
        try:
            self.engine.submit(call.engine_request)
        except EngineFull as exc:
            raise ApiError(429, f"server is busy ({exc}); retry later",
                           type_="rate_limit_error") from exc
        return body, call

    async def _parse(self, request: Request, schema: type[_B]) -> _B:
        check_content_type(request.headers.get("content-type"))
        data = decode_object(await read_body(request))
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise ApiError(400, message, param=param) from exc
        if body.continuation is not None:
            self._check_continuation(request, body.continuation)
        return body

    def _check_continuation(self, request: Request, continuation: Continuation) -> None:
        # the router's own field (it resumes a stream with it): only with the fleet's secret,
        # and only tokens this engine could have generated
        given = request.headers.get(INTERNAL_HEADER, "")
        if not self.internal_token or not secrets.compare_digest(given, self.internal_token):
            raise ApiError(400, "continuation: an internal field the router sends when it "
                           "resumes a stream; clients may not send it", param="continuation")
        problem = self.engine.check_resume(continuation.token_ids, continuation.text_sent)
        if problem is not None:
            raise ApiError(400, f"continuation: {problem}", param="continuation")

    def _check_model(self, model: str) -> None:
        if model not in self.names:
            raise ApiError(404, f"The model `{model}` does not exist; this worker serves "
                           f"{', '.join(self.names)}", param="model", type_="not_found_error",
                           code="model_not_found")

    def _sampling(self, body: _Body, prompt: Prompt, limit: int | None) -> SamplingParams:
        max_len = self.engine.max_model_len
        room = max_len - len(prompt.token_ids)
        resumed = len(body.continuation.token_ids) if body.continuation else 0
        if resumed and (limit is None or resumed >= limit or resumed >= room):
            raise ApiError(400, "continuation.token_ids: as many tokens as the request may "
                           "generate already; nothing to resume", param="continuation")
        chat = isinstance(body, ChatCompletionRequest)
        if room < 1:
            raise ApiError(400, f"This model's maximum context length is {max_len} "
                           f"tokens, and the prompt has {len(prompt.token_ids)}; shorten the "
                           "prompt", param="messages" if chat else "prompt")
        if limit is not None and limit > room:
            field = ("max_completion_tokens" if isinstance(body, ChatCompletionRequest)
                     and body.max_completion_tokens is not None else "max_tokens")
            raise ApiError(400, f"This model's maximum context length is {max_len} "
                           f"tokens. However, you requested {limit + len(prompt.token_ids)} "
                           f"tokens ({len(prompt.token_ids)} in the prompt, {limit} in the "
                           f"completion); reduce {field}", param=field)
        return SamplingParams(
            max_tokens=limit if limit is not None else room,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stops(),
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
        )

    def _guard_size(self, text: str, field: str) -> None:
        # Refuse absurd prompts before spending CPU on tokenizing them.
        if len(text) > self.engine.max_model_len * 32:
            raise ApiError(400, f"{field}: prompt is far longer than the model's maximum "
                           f"context length of {self.engine.max_model_len} tokens", param=field)

    async def _injected_faults(self) -> None:
        """Admin-API faults on the way in: an error, a hang, added latency."""
        error = self.faults.error()
        if error is not None:
            raise ApiError(error[0], error[1], type_="server_error")
        await self.faults.hang()
        delay = self.faults.latency()
        if delay:
            await asyncio.sleep(delay)

    # -- from the engine to the client ---------------------------------------------------------

    def _observe(self, call: _Call, out: Output, first: list[float]) -> None:
        now = time.monotonic()
        model = self.names[0]
        if out.text:
            if not first:
                self.metrics.ttft.labels(model).observe(now - call.started)
            else:
                self.metrics.itl.labels(model).observe(now - first[0])
            first[:] = [now]
        if out.finished:
            self.metrics.finished(out.finish_reason or "error", out.prompt_tokens,
                                  out.completion_tokens, now - call.started)

    async def _stream(self, call: _Call, body: _Body) -> AsyncIterator[bytes]:
        chat = isinstance(body, ChatCompletionRequest)
        chunks = _Chunks(id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
                         created=int(time.time()), model=body.model,
                         fingerprint=self.fingerprint, chat=chat,
                         usage_requested=body.include_usage(),
                         return_token_ids=body.return_token_ids)
        last: list[float] = []
        try:
            if chat:
                yield chunks.delta({"role": "assistant", "content": ""}, None)
            while True:
                out = await call.queue.get()
                self._observe(call, out, last)
                if out.error is not None:
                    call.finished = True
                    yield _sse(error_body(f"generation failed: {out.error}", "server_error",
                                          code=500))
                    yield _sse("[DONE]")
                    return
                if out.text:
                    if self.faults.faults:
                        delay = self.faults.token_delay()
                        if delay:
                            await asyncio.sleep(delay)
                        cut = self.faults.truncate()
                        if cut is not None and out.completion_tokens > cut[0]:
                            if cut[1]:
                                call.finished = True
                                yield _sse(error_body("stream truncated by an injected fault",
                                                      "server_error", code=500))
                                yield _sse("[DONE]")
                            return  # without an error frame: a silent cut
                    yield chunks.delta({"content": out.text} if chat else out.text, None,
                                       out.token_ids)
                elif out.token_ids and body.return_token_ids:
                    # a token whose text is held back still reaches the router's checkpoint
                    yield chunks.delta({"content": ""} if chat else "", None, out.token_ids)
                if out.finished:
                    call.finished = True
                    yield chunks.delta({} if chat else "", out.finish_reason)
                    if chunks.usage_requested:
                        yield chunks.usage(out)
                    yield _sse("[DONE]")
                    return
        finally:
            if not call.finished:
                self.engine.cancel(call.engine_request)

    async def _complete(self, request: Request, call: _Call, body: _Body) -> Response:
        rid = call.engine_request.request_id
        texts: list[str] = []
        last: list[float] = []

        async def collect() -> Output:
            while True:
                out = await call.queue.get()
                self._observe(call, out, last)
                texts.append(out.text)
                if out.finished or out.error is not None:
                    return out

        async def disconnected() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return

        collector = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if collector not in done:
            collector.cancel()
            self.engine.cancel(call.engine_request)
            return Response(status_code=499)
        out = collector.result()
        if out.error is not None:
            return _error_response(ApiError(500, f"generation failed: {out.error}",
                                            type_="server_error"), rid)
        text = "".join(texts)
        created_at = int(time.time())
        if isinstance(body, ChatCompletionRequest):
            payload: dict[str, Any] = {
                "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
                "created": created_at, "model": body.model,
                "system_fingerprint": self.fingerprint,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": _usage(out)}
        else:
            payload = {
                "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion",
                "created": created_at, "model": body.model,
                "system_fingerprint": self.fingerprint,
                "choices": [{"index": 0, "text": (body.text() if body.echo else "") + text,
                             "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": _usage(out)}
        return JSONResponse(payload, headers={"X-Request-Id": rid})
