"""OpenAI request schemas (strict: a wrong type is a 400, never silently coerced) and errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "INTERNAL_HEADER",
    "KEEP_ALIVE_S",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "ApiError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "check_content_type",
    "decode_object",
    "error_body",
    "read_body",
    "sse_data",
    "validation_message",
]

MAX_STOP = 4

# How long the worker and router servers keep an idle connection open (uvicorn's default is 5 s).
# A server that closes an idle connection just as the client reuses it loses that request
# (aiohttp: ServerDisconnectedError), so it outlasts the clients' own idle limits: httpx's 5 s
# and the router pool's `router.POOL_IDLE_S`.
KEEP_ALIVE_S = 65

# Bounds on a request body, checked before (size) and while (depth) it is parsed: an OpenAI
# request is a few levels deep (body > messages > message > content part > field).
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 32
# The header the router sends to its workers with the fleet's internal secret: only requests
# that carry it may use the router's internal fields (`continuation`).
INTERNAL_HEADER = "x-llm-chaos-internal"
INTERNAL_FIELDS = ("continuation",)


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP status, message, type and the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_
        self.code = code


def error_body(message: str, type_: str, param: str | None = None,
               code: str | int | None = None) -> dict[str, Any]:
    """The JSON body OpenAI sends with an error."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def check_content_type(value: str | None) -> None:
    """415 unless the body is declared JSON (or not declared at all, as curl -d with no -H
    and many scripts send it)."""
    if not value:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    raise ApiError(415, f"Content-Type {media!r} is not supported: send the body as JSON with "
                   "`Content-Type: application/json`", type_="invalid_request_error")


async def read_body(request: Any) -> bytes:
    """A Starlette request's body, refused (413) once it passes MAX_BODY_BYTES, before the rest
    is read (a declared Content-Length past it is refused before anything is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    return bytes(body)


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON object in a request body, or an ApiError (413 or 400) that names the problem.

    Size is checked before parsing; nesting deeper than the interpreter's stack is a
    RecursionError in the parser and deeper than MAX_JSON_DEPTH is refused after it; a lone
    surrogate (`\\ud800`), which no tokenizer or UTF-8 writer takes, is refused here rather
    than fail later with a 500."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise ApiError(400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep"
                       ) from exc
    except (ValueError, UnicodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise ApiError(400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeError as exc:
        raise ApiError(400, f"request body is not valid JSON text: {exc}") from exc
    return data


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def validation_message(exc: ValidationError | Any) -> tuple[str, str | None]:
    """One readable line naming the first bad field, and the field's path."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    field = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {msg}", None
    return (f"{field}: {msg}" if field else msg), field


class _Strict(BaseModel):
    # Unknown OpenAI fields (user, logprobs, ...) are accepted and ignored, like OpenAI does.
    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class Continuation(_Strict):
    """Resume a stream: the tokens already generated and the characters already sent."""

    token_ids: list[int] = Field(max_length=1_000_000)
    text_sent: int = Field(ge=0)

    @field_validator("token_ids")
    @classmethod
    def _ids(cls, value: list[int]) -> list[int]:
        if any(t < 0 for t in value):
            raise ValueError("token ids must not be negative")
        return value


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    # Extensions for the router's mid-stream resume (vLLM has `return_token_ids` too).
    return_token_ids: bool = False
    continuation: Continuation | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def limit(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt is supported (a string or a list of one string)")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def limit(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else 16


def sse_data(event: bytes) -> Iterator[bytes]:
    """The `data:` payloads of one Server-Sent Event (`[DONE]` included), stripped. The
    router's relays and the audit trail read streams through this; the harness has its own
    reader (harness/loadgen/sse.py), the target never imports the harness."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip()
