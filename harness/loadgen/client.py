"""One OpenAI request (chat or completions, streaming or not) with every event timestamped.

The read path is h11 (the HTTP/1.1 state machine under httpx) over a plain socket: the clock
is read as soon as `recv()` returns, before any parsing, so events that arrived together share
one timestamp and nothing waits for a buffer to fill. Locust's FastHttpUser `stream.read(4096)`
does wait, and so reported TTFT hundreds of ms late; httpx's `iter_bytes()` is prompt but costs
2.4x more CPU per event (124 vs 52 us measured here with 16 streams against the simulated
engine), and that CPU turns into delay when many events arrive at once. Under Locust the socket
is gevent's, so this runs cooperatively; in plain threads it works the same.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx

from ..endpoint import auth_headers, check_header, normalize_base_url, redact, secret_values
from ..errors import EndpointError, HarnessError, TargetError, UsageError
from .sse import SSEDecoder

__all__ = ["Outcome", "Request", "StreamClient", "discover_model", "extract_text"]

_BODY_EXCERPT = 300
_MAX_ERROR_BODY = 64 * 1024
_RECV = 65536


@dataclass(frozen=True)
class Request:
    """What to send: the API (`chat` or `completions`), the JSON body, and its request id."""

    api: str
    body: Mapping[str, Any]
    request_id: str
    path: str | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def url_path(self) -> str:
        if self.path:
            return self.path
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"


@dataclass
class Outcome:
    """What happened to one request, in raw form: monotonic times, text, usage, status.

    `status` is `ok` or names the failure, one of `harness.runner.rundir.STATUSES`.
    """

    request_id: str
    sent_mono: float
    end_mono: float = 0.0
    content_times: list[float] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage_prompt: int | None = None
    usage_completion: int | None = None
    done_seen: bool = False
    http_status: int | None = None
    status: str = "ok"
    error: str | None = None
    retry_after: float | None = None
    bytes_received: int = 0
    events: int = 0
    deviations: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, status: str, error: str) -> Outcome:
        self.status = status
        self.error = error
        return self


def extract_text(choice: Mapping[str, Any]) -> str:
    """The generated text a choice carries: content, reasoning, tool-call arguments or text."""
    delta = choice.get("delta")
    if delta is None:
        delta = choice.get("message")
    if isinstance(delta, Mapping):
        parts = [delta.get("content"), delta.get("reasoning_content"), delta.get("reasoning")]
        text = "".join(p for p in parts if isinstance(p, str))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, Mapping) else None
                args = fn.get("arguments") if isinstance(fn, Mapping) else None
                if isinstance(args, str):
                    text += args
        return text
    value = choice.get("text")
    return value if isinstance(value, str) else ""


class _Closed(Exception):
    """The server closed the connection (h11 saw EOF where it needed more)."""


class StreamClient:
    """The HTTP client of one simulated user: one keep-alive connection, raw-read streaming."""

    def __init__(self, base_url: str, *, timeout: float = 120.0, connect_timeout: float = 10.0,
                 headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                 api_key: str | None = None, tls: ssl.SSLContext | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = normalize_base_url(base_url)
        parts = urlsplit(self.base_url)
        assert parts.hostname is not None  # normalize_base_url refuses a URL without one
        self.clock = clock
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path
        # system CAs unless told otherwise; made once, not per connection
        self._ssl = tls if tls is not None else (
            ssl.create_default_context() if self._tls else None)
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        given = auth_headers([check_header(n, v, "header") for n, v in pairs], api_key)
        self._extra = given
        self._secrets = [s for s in (api_key, *secret_values(given)) if s]
        merged = {"host": ("Host", parts.netloc.rsplit("@", 1)[-1]),
                  "accept-encoding": ("Accept-Encoding", "identity"),
                  "user-agent": ("User-Agent", "llm-chaos-loadgen")}
        for name, value in given:  # a user's header replaces a default of the same name
            merged[name.lower()] = (name, value)
        self._headers = list(merged.values())
        self._sock: socket.socket | None = None
        self._conn: h11.Connection | None = None
        self._now = 0.0

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._conn = None

    def get_json(self, path: str) -> Any:
        """GET a JSON document (e.g. /v1/models) on a connection of its own, with this
        client's headers and TLS settings; TargetError when unreachable, EndpointError (status
        and body excerpt) when the answer is an error or not JSON."""
        url = self.base_url + path
        try:
            resp = httpx.get(url, headers=self._extra, timeout=self.connect_timeout,
                             verify=self._ssl if self._ssl is not None else True)
        except httpx.HTTPError as exc:
            raise TargetError(self.redact(f"GET {url}: cannot reach the target: "
                                          f"{type(exc).__name__}: {exc}")) from exc
        ctype = resp.headers.get("content-type", "?").split(";")[0]
        detail = self.redact(_body_text(resp.content[:_MAX_ERROR_BODY], ctype))
        if not resp.is_success:
            raise EndpointError(f"GET {url} answered HTTP {resp.status_code} ({ctype}): "
                                f"{detail}", resp.status_code, detail)
        try:
            return resp.json()
        except ValueError as exc:
            raise EndpointError(f"GET {url} answered HTTP {resp.status_code} with a body that "
                                f"is not JSON ({ctype}): {detail}", None, detail) from exc

    def redact(self, text: str) -> str:
        """`text` without this client's API key or credential header values."""
        return redact(text, self._secrets) if self._secrets else text

    def send(self, req: Request,
             started: Callable[[Outcome], None] | None = None) -> Outcome:
        """Send `req` and read the whole answer; never raises for what the server did.

        `started` gets the outcome just before the request bytes are written, so a caller
        interrupted mid-request (a stopped Locust user) can still record what had arrived.
        """
        payload = json.dumps(req.body).encode()
        head = h11.Request(method="POST", target=self._prefix + req.url_path(), headers=[
            *self._headers, ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))), ("X-Request-Id", req.request_id),
            ("Accept", "text/event-stream" if req.stream else "application/json")])
        out = Outcome(req.request_id, sent_mono=self.clock())
        try:
            return self._exchange(req, head, payload, out, started)
        finally:
            if out.error is not None and self._secrets:
                out.error = self.redact(out.error)  # a server may echo the key it refused
            if not out.end_mono:
                out.end_mono = self.clock()
            conn = self._conn
            if conn is not None and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                self.close()

    def _exchange(self, req: Request, head: h11.Request, payload: bytes, out: Outcome,
                  started: Callable[[Outcome], None] | None) -> Outcome:
        response: h11.Response | None = None
        for attempt in (0, 1):
            reused = self._sock is not None
            try:
                sock, conn = self._connection()
            except TimeoutError as exc:
                return out.fail("connect_error", f"cannot reach the target: connect timed out "
                                f"after {self.connect_timeout:g} s ({exc})")
            except OSError as exc:
                return out.fail("connect_error", f"cannot reach the target: {exc}")
            # Request start (DESIGN.md): just before the request bytes are written.
            out.sent_mono = self.clock()
            if started is not None and attempt == 0:
                started(out)
            try:
                sock.sendall(conn.send(head) + conn.send(h11.Data(data=payload))
                             + conn.send(h11.EndOfMessage()))
                response = self._read_head()
                break
            except TimeoutError:
                return out.fail("timeout", f"no response within {self.timeout:g} s")
            except (OSError, h11.ProtocolError, _Closed) as exc:
                self.close()
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: nothing was processed, retry once
                return out.fail("connect_error", f"connection failed before any response: "
                                f"{type(exc).__name__}: {exc}")
        if response is None:
            return out.fail("connect_error", "no response")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in response.headers}
        out.http_status = response.status_code
        try:
            if response.status_code != 200:
                return self._http_error(response.status_code, headers, out)
            ctype = headers.get("content-type", "")
            if req.stream:
                if not ctype.startswith("text/event-stream"):
                    return self._unexpected(headers, out, "text/event-stream")
                return self._read_stream(out)
            if "json" not in ctype:
                return self._unexpected(headers, out, "application/json")
            return self._read_json(out)
        except TimeoutError:
            return out.fail("timeout", self._cut_message(
                f"no bytes for {self.timeout:g} s", out))
        except (OSError, h11.ProtocolError, _Closed) as exc:
            if out.finish_reason is not None and not out.done_seen:
                # Ended after its finish_reason: completed, with the close logged as a deviation.
                out.deviations.append("no_done")
                _note_empty(out)
                return out
            return out.fail("truncated", self._cut_message(
                f"stream cut ({type(exc).__name__}: {exc or 'closed'})", out))

    def _connection(self) -> tuple[socket.socket, h11.Connection]:
        if self._sock is None or self._conn is None:
            sock = socket.create_connection((self._host, self._port),
                                            timeout=self.connect_timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
                sock.settimeout(self.timeout)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
            self._conn = h11.Connection(h11.CLIENT)
        return self._sock, self._conn

    def _next(self) -> Any:
        """The next h11 event; reads the socket (and reads the clock) when h11 needs data."""
        conn = self._conn
        sock = self._sock
        if conn is None or sock is None:
            raise _Closed("no open connection")
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = sock.recv(_RECV)
            self._now = self.clock()
            if not data and conn.their_state is h11.SEND_RESPONSE:
                raise _Closed("server closed the connection without a response")
            conn.receive_data(data)

    def _read_head(self) -> h11.Response:
        while True:
            event = self._next()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise _Closed("server closed the connection without a response")

    def _body(self, out: Outcome) -> Iterator[bytes]:
        """Body bytes as they arrive (`self._now` is when the read that brought them returned)."""
        while True:
            event = self._next()
            if isinstance(event, h11.Data):
                out.bytes_received += len(event.data)
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise _Closed("connection closed")

    @staticmethod
    def _cut_message(what: str, out: Outcome) -> str:
        return (f"{what} after {out.events} events and {len(out.content_times)} content "
                "chunks, before any finish_reason")

    def _read_stream(self, out: Outcome) -> Outcome:
        decoder = SSEDecoder()
        for chunk in self._body(out):
            now = self._now
            for event in decoder.feed(chunk):
                if out.done_seen:
                    continue
                out.events += 1
                data = event.data
                if data == "[DONE]":
                    out.done_seen = True
                    out.end_mono = now
                    continue
                try:
                    payload = json.loads(data)
                except ValueError:
                    out.end_mono = now
                    return out.fail("malformed_stream",
                                    f"event {out.events} is not JSON: {data[:_BODY_EXCERPT]!r}")
                if not isinstance(payload, dict):
                    out.end_mono = now
                    return out.fail("malformed_stream", f"event {out.events} is not a JSON "
                                    f"object: {data[:_BODY_EXCERPT]!r}")
                if "error" in payload:
                    out.end_mono = now
                    return out.fail("error_frame", "server sent an error frame: "
                                    + _error_text(payload["error"]))
                self._take_chunk(payload, now, out)
        if not out.done_seen:
            out.end_mono = self._now
            if decoder.pending:
                out.deviations.append("partial_event")
            if out.finish_reason is None:
                return out.fail("truncated", f"stream ended after {out.events} events and "
                                f"{len(out.content_times)} content chunks without a "
                                "finish_reason or [DONE]")
            out.deviations.append("no_done")
        elif out.finish_reason is None:
            return out.fail("truncated", "[DONE] came before any choice carried a finish_reason")
        _note_empty(out)
        return out

    @staticmethod
    def _take_chunk(payload: dict[str, Any], now: float, out: Outcome) -> None:
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                text = extract_text(choice)
                if text:
                    out.content_times.append(now)
                    out.pieces.append(text)
                reason = choice.get("finish_reason")
                if reason:
                    out.finish_reason = str(reason)
        _take_usage(payload.get("usage"), out)

    def _read_all(self, out: Outcome, limit: int | None = None) -> bytes:
        parts: list[bytes] = []
        size = 0
        for chunk in self._body(out):
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
        out.end_mono = self._now
        return b"".join(parts)

    def _read_json(self, out: Outcome) -> Outcome:
        raw = self._read_all(out)
        try:
            payload = json.loads(raw)
        except ValueError:
            return out.fail("malformed_stream", f"response is not JSON: {raw[:_BODY_EXCERPT]!r}")
        if not isinstance(payload, dict):
            return out.fail("malformed_stream", "response is not a JSON object")
        if "error" in payload:
            return out.fail("error_frame", "server answered an error: "
                            + _error_text(payload["error"]))
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    text = extract_text(choice)
                    if text:
                        out.pieces.append(text)
                    if choice.get("finish_reason"):
                        out.finish_reason = str(choice["finish_reason"])
        _take_usage(payload.get("usage"), out)
        if out.finish_reason is None:
            return out.fail("truncated", "response has no choice with a finish_reason")
        _note_empty(out)
        return out

    def _http_error(self, status: int, headers: dict[str, str], out: Outcome) -> Outcome:
        body = self._read_all(out, _MAX_ERROR_BODY)
        ctype = headers.get("content-type", "?").split(";")[0]
        detail = _body_text(body, ctype)
        retry = headers.get("retry-after")
        if retry is not None:
            try:
                out.retry_after = float(retry)
            except ValueError:
                out.retry_after = None
        if status == 429:
            after = f", Retry-After: {retry}" if retry is not None else ""
            return out.fail("rate_limited", f"HTTP 429 rate limited{after}: {detail}")
        return out.fail("http_error", f"HTTP {status} ({ctype}): {detail}")

    def _unexpected(self, headers: dict[str, str], out: Outcome, wanted: str) -> Outcome:
        body = self._read_all(out, _MAX_ERROR_BODY)
        ctype = headers.get("content-type", "none").split(";")[0]
        return out.fail("bad_content_type", f"HTTP 200 with content-type {ctype}, expected "
                        f"{wanted}: {_body_text(body, ctype)}")


def discover_model(client: StreamClient) -> str:
    """The first model of the target's `GET /v1/models`; UsageError, with the server's status
    and body and naming `--model` as the fix, when it cannot be listed."""
    url = client.base_url + "/v1/models"
    try:
        listing = client.get_json("/v1/models")
    except HarnessError as exc:
        status = exc.status if isinstance(exc, EndpointError) else None
        auth = (" (or give the API key: --api-key KEY or $OPENAI_API_KEY)"
                if status in (401, 403) else "")
        raise UsageError(f"cannot find out which model to request: {exc}; give it with "
                         f"--model NAME{auth}") from exc
    data = listing.get("data") if isinstance(listing, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    if not isinstance(first, dict) or not isinstance(first.get("id"), str):
        raise UsageError(f"cannot find out which model to request: GET {url} lists no model "
                         f"({client.redact(json.dumps(listing)[:_BODY_EXCERPT])}); give it "
                         "with --model NAME")
    return str(first["id"])


def _note_empty(out: Outcome) -> None:
    """A completed answer with no text at all (a llama.cpp completion that stopped at once) is
    kept `ok`, as the server meant it, but noted, so the checks can count such answers."""
    if not any(out.pieces):
        out.deviations.append("empty_response")


def _take_usage(usage: Any, out: Outcome) -> None:
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int):
            out.usage_prompt = prompt
        if isinstance(completion, int):
            out.usage_completion = completion


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        msg = error.get("message") or json.dumps(error)[:_BODY_EXCERPT]
        kind = error.get("type") or error.get("code")
        return f"{msg} ({kind})" if kind else str(msg)
    return str(error)[:_BODY_EXCERPT]


def _body_text(body: bytes, ctype: str) -> str:
    text = body.decode("utf-8", errors="replace")
    if "json" in ctype:
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            return _error_text(payload["error"])
        if isinstance(payload, dict) and "detail" in payload:
            return str(payload["detail"])[:_BODY_EXCERPT]
    if "html" in ctype:
        start = text.lower().find("<title>")
        end = text.lower().find("</title>")
        if 0 <= start < end:
            return "HTML page titled " + repr(text[start + 7:end].strip()[:_BODY_EXCERPT])
        return "HTML page"
    return repr(" ".join(text.split())[:_BODY_EXCERPT]) if text else "empty body"
