"""The worker server: one engine behind an OpenAI-compatible HTTP API.

Endpoints: POST /v1/chat/completions, POST /v1/completions (streaming as SSE or not),
GET /v1/models, GET /health (fails when the engine has work but makes no progress),
GET /metrics (Prometheus), GET /debug/engine (steps and batch composition).
A bad request gets an OpenAI-style error JSON with a 4xx naming the field, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import (
    INTERNAL_HEADER,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    check_content_type,
    decode_object,
    error_body,
    read_body,
    validation_message,
)
from .faults import FaultSet, FaultSpec
from .metrics import WorkerMetrics
from .params import GenerationRequest, Output, SamplingParams
from .protocol import Engine, EngineFull, Prompt

__all__ = ["create_app"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


def create_app(engine: Engine, served_names: list[str] | None = None) -> FastAPI:
    """Build the worker's ASGI app around a (not yet started) engine."""
    names = served_names or [engine.model_name]
    metrics = WorkerMetrics(names[0], engine.stats)
    created = int(time.time())
    # OpenAI's system_fingerprint names the backend configuration that produced an answer.
    fingerprint = "fp_" + hashlib.sha256(
        f"{engine.model_name}/{engine.max_model_len}".encode()).hexdigest()[:10]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="llm-chaos reference worker", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.delivery = None
    faults = FaultSet()
    app.state.faults = faults
    admin_token = os.environ.get("LLM_CHAOS_ADMIN_TOKEN", "")
    internal_token = os.environ.get("LLM_CHAOS_INTERNAL_TOKEN", "")

    def admin_denied(request: Request) -> JSONResponse | None:
        if not admin_token:
            return JSONResponse(error_body("this worker's admin API is off: start it with "
                                           "LLM_CHAOS_ADMIN_TOKEN set", "permission_error",
                                           code=403), status_code=403)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), admin_token):
            return JSONResponse(error_body("admin token missing or wrong", "permission_error",
                                           code=403), status_code=403)
        return None

    @app.get("/admin/faults")
    async def list_faults(request: Request) -> JSONResponse:
        return admin_denied(request) or JSONResponse({"faults": faults.public()})

    @app.post("/admin/faults")
    async def add_fault(request: Request) -> JSONResponse:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        try:
            spec = FaultSpec.model_validate_json(await request.body())
        except ValidationError as exc:
            message, param = validation_message(exc)
            return JSONResponse(error_body(message, "invalid_request_error", param),
                                status_code=400)
        return JSONResponse(faults.add(spec).public(), status_code=201)

    @app.delete("/admin/faults/{fault_id}")
    async def remove_fault(request: Request, fault_id: str) -> JSONResponse:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        if faults.remove(fault_id) is None:
            return JSONResponse(error_body(f"no active fault {fault_id!r}", "not_found_error"),
                                status_code=404)
        return JSONResponse({"removed": fault_id})

    @app.delete("/admin/faults")
    async def clear_faults(request: Request) -> JSONResponse:
        return admin_denied(request) or JSONResponse({"removed": faults.clear()})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind, code=exc.status_code),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok, why = engine.healthy()
        return JSONResponse({"status": "ok" if ok else "unhealthy", "detail": why},
                            status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": created, "owned_by": "llm-chaos",
             "max_model_len": engine.max_model_len} for n in names]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/debug/engine")
    async def engine_stats() -> dict[str, Any]:
        return engine.stats()

    @app.get("/debug/sim/trace/{request_id}")
    async def sim_trace(request_id: str) -> JSONResponse:
        trace = getattr(engine, "trace", None)
        found = trace(request_id) if trace is not None else None
        if found is None:
            return JSONResponse(error_body(f"no trace for request {request_id!r}",
                                           "not_found_error"), status_code=404)
        return JSONResponse(found)

    async def parse(request: Request, schema: type[Any]) -> Any:
        check_content_type(request.headers.get("content-type"))
        data = decode_object(await read_body(request))
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise ApiError(400, message, param=param) from exc
        if body.continuation is not None:
            check_continuation(request, body.continuation)
        return body

    def check_continuation(request: Request, continuation: Any) -> None:
        # the router's own field (it resumes a stream with it): only with the fleet's secret,
        # and only tokens this engine could have generated
        given = request.headers.get(INTERNAL_HEADER, "")
        if not internal_token or not secrets.compare_digest(given, internal_token):
            raise ApiError(400, "continuation: an internal field the router sends when it "
                           "resumes a stream; clients may not send it", param="continuation")
        problem = engine.check_resume(continuation.token_ids, continuation.text_sent)
        if problem is not None:
            raise ApiError(400, f"continuation: {problem}", param="continuation")

    def check_model(model: str) -> str:
        if model not in names:
            raise ApiError(404, f"The model `{model}` does not exist; this worker serves "
                           f"{', '.join(names)}", param="model", type_="not_found_error",
                           code="model_not_found")
        return model

    def sampling(body: Any, prompt: Prompt, limit: int | None) -> SamplingParams:
        room = engine.max_model_len - len(prompt.token_ids)
        resumed = len(body.continuation.token_ids) if body.continuation else 0
        if resumed and (limit is None or resumed >= limit or resumed >= room):
            raise ApiError(400, "continuation.token_ids: as many tokens as the request may "
                           "generate already; nothing to resume", param="continuation")
        chat = isinstance(body, ChatCompletionRequest)
        if room < 1:
            raise ApiError(400, f"This model's maximum context length is {engine.max_model_len} "
                           f"tokens, and the prompt has {len(prompt.token_ids)}; shorten the "
                           "prompt", param="messages" if chat else "prompt")
        if limit is not None and limit > room:
            field = ("max_completion_tokens" if chat and body.max_completion_tokens is not None
                     else "max_tokens")
            raise ApiError(400, f"This model's maximum context length is {engine.max_model_len} "
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

    def guard_size(text: str, field: str) -> None:
        # Refuse absurd prompts before spending CPU on tokenizing them.
        if len(text) > engine.max_model_len * 32:
            raise ApiError(400, f"{field}: prompt is far longer than the model's maximum "
                           f"context length of {engine.max_model_len} tokens", param=field)

    async def injected_faults() -> None:
        """Admin-API faults on the way in: an error, a hang, added latency."""
        error = faults.error()
        if error is not None:
            raise ApiError(error[0], error[1], type_="server_error")
        await faults.hang()
        delay = faults.latency()
        if delay:
            await asyncio.sleep(delay)

    async def generate(request: Request, chat: bool) -> Response:
        request_id = _request_id(request)
        try:
            if chat:
                body = await parse(request, ChatCompletionRequest)
                check_model(body.model)
                messages = [{"role": m.role, "content": m.text()} for m in body.messages]
                guard_size("".join(m["content"] for m in messages), "messages")
                prompt = engine.encode_chat(messages)
            else:
                body = await parse(request, CompletionRequest)
                check_model(body.model)
                guard_size(body.text(), "prompt")
                prompt = engine.encode_text(body.text())
            params = sampling(body, prompt, body.limit())
            await injected_faults()
            if app.state.delivery is None:
                app.state.delivery = _Delivery(asyncio.get_running_loop())
            call = _Call(request_id, prompt, params, app.state.delivery)
            if body.continuation is not None:
                call.engine_request.resume_ids = list(body.continuation.token_ids)
                call.engine_request.resume_text_sent = body.continuation.text_sent
            try:
                engine.submit(call.engine_request)
            except EngineFull as exc:
                raise ApiError(429, f"server is busy ({exc}); retry later",
                               type_="rate_limit_error") from exc
        except ApiError as exc:
            metrics.rejected.labels(names[0], str(exc.status)).inc()
            return _error_response(exc, request_id)
        if body.stream:
            return StreamingResponse(stream(call, body, chat), media_type="text/event-stream",
                                     headers={**SSE_HEADERS, "X-Request-Id": request_id})
        return await complete(request, call, body, chat)

    def observe(call: _Call, out: Output, first: list[float]) -> None:
        now = time.monotonic()
        if out.text:
            if not first:
                metrics.ttft.labels(names[0]).observe(now - call.started)
            else:
                metrics.itl.labels(names[0]).observe(now - first[0])
            first[:] = [now]
        if out.finished:
            metrics.finished(out.finish_reason or "error", out.prompt_tokens,
                             out.completion_tokens, now - call.started)

    async def stream(call: _Call, body: Any, chat: bool) -> AsyncIterator[bytes]:
        rid = call.engine_request.request_id
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created_at = int(time.time())
        usage_requested = body.include_usage()
        last: list[float] = []

        def chunk(delta: dict[str, Any] | str, finish: str | None,
                  token_ids: tuple[int, ...] = ()) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0}
            if chat:
                choice["delta"] = delta
            else:
                choice["text"] = delta
            choice["logprobs"] = None
            choice["finish_reason"] = finish
            if body.return_token_ids and token_ids:
                choice["token_ids"] = list(token_ids)
            out = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                   "created": created_at, "model": body.model,
                   "system_fingerprint": fingerprint, "choices": [choice]}
            if usage_requested:
                out["usage"] = None
            return out

        try:
            if chat:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
            while True:
                out = await call.queue.get()
                observe(call, out, last)
                if out.error is not None:
                    call.finished = True
                    yield _sse(error_body(f"generation failed: {out.error}", "server_error",
                                          code=500))
                    yield _sse("[DONE]")
                    return
                if out.text:
                    if faults.faults:
                        delay = faults.token_delay()
                        if delay:
                            await asyncio.sleep(delay)
                        cut = faults.truncate()
                        if cut is not None and out.completion_tokens > cut[0]:
                            if cut[1]:
                                call.finished = True
                                yield _sse(error_body("stream truncated by an injected fault",
                                                      "server_error", code=500))
                                yield _sse("[DONE]")
                            return  # without an error frame: a silent cut
                    yield _sse(chunk({"content": out.text} if chat else out.text, None,
                                     out.token_ids))
                elif out.token_ids and body.return_token_ids:
                    # a token whose text is held back still reaches the router's checkpoint
                    yield _sse(chunk({"content": ""} if chat else "", None, out.token_ids))
                if out.finished:
                    call.finished = True
                    yield _sse(chunk({} if chat else "", out.finish_reason))
                    if usage_requested:
                        yield _sse({"id": cid, "object": "chat.completion.chunk" if chat else
                                    "text_completion", "created": created_at,
                                    "model": body.model, "system_fingerprint": fingerprint,
                                    "choices": [],
                                    "usage": _usage(out)})
                    yield _sse("[DONE]")
                    return
        finally:
            if not call.finished:
                engine.cancel(call.engine_request)
            del rid

    async def complete(request: Request, call: _Call, body: Any, chat: bool) -> Response:
        rid = call.engine_request.request_id
        texts: list[str] = []
        last: list[float] = []

        async def collect() -> Output:
            while True:
                out = await call.queue.get()
                observe(call, out, last)
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
            engine.cancel(call.engine_request)
            return Response(status_code=499)
        out = collector.result()
        if out.error is not None:
            return _error_response(ApiError(500, f"generation failed: {out.error}",
                                            type_="server_error"), rid)
        text = "".join(texts)
        created_at = int(time.time())
        if chat:
            payload: dict[str, Any] = {
                "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
                "created": created_at, "model": body.model, "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": _usage(out)}
        else:
            payload = {
                "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion",
                "created": created_at, "model": body.model, "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "text": (body.text() if body.echo else "") + text,
                             "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": _usage(out)}
        return JSONResponse(payload, headers={"X-Request-Id": rid})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    return app


def _usage(out: Output) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}
