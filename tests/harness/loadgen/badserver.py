"""A misbehaving OpenAI-style server for tests: one raw HTTP/1.1 answer per mode, on loopback.

Raw sockets, so it can do what real frameworks refuse to: cut a chunked stream mid-way, send
malformed SSE, or end a stream without `[DONE]`.
"""

from __future__ import annotations

import itertools
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MODES = ("ok", "html404", "malformed", "cut", "ratelimit", "errorframe", "nodone", "rolecut")
# only when a path names it: a finished answer with no text (llama.cpp's at-once stop)
NAMED_ONLY = ("empty",)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(payload: object) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return _chunk(f"data: {text}\n\n".encode())


def _delta(content: str | None, finish: str | None = None, role: bool = False) -> dict[str, object]:
    delta: dict[str, object] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    return {"id": "x", "object": "chat.completion.chunk", "model": "bad",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")


def answer(mode: str, conn: socket.socket) -> None:
    """Write the answer of `mode` to `conn` (the request has been read)."""
    if mode == "html404":
        body = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        return
    if mode == "ratelimit":
        body = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}})
        conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                     b"Retry-After: 2\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\nConnection: close\r\n\r\n" + body.encode())
        return
    conn.sendall(_SSE_HEAD)
    conn.sendall(_event(_delta("", role=True)))
    if mode == "empty":
        conn.sendall(_event(_delta("", "stop")) + _event("[DONE]") + b"0\r\n\r\n")
        return
    if mode == "rolecut":
        conn.close()  # cut before any content: no chunk terminator
        return
    for word in (" one", " two", " three"):
        time.sleep(0.01)
        conn.sendall(_event(_delta(word)))
    if mode == "malformed":
        conn.sendall(_chunk(b"data: {not json\n\n"))
    elif mode == "cut":
        return  # closed by the caller without finishing the chunked body
    elif mode == "errorframe":
        conn.sendall(_event({"error": {"message": "worker died", "type": "server_error"}}))
        conn.sendall(_event("[DONE]"))
    else:
        conn.sendall(_event(_delta(None, "stop")))
        conn.sendall(_event({"id": "x", "choices": [], "usage": {
            "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}))
        if mode != "nodone":
            conn.sendall(_event("[DONE]"))
    conn.sendall(b"0\r\n\r\n")


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(body) < length:
            body += conn.recv(65536)
        path = head.split(b" ")[1].decode()
        server: BadServer = self.server  # type: ignore[assignment]
        mode = server.mode_for(path)
        if path.endswith("/completions"):
            with server.lock:
                server.requests += 1
        try:
            answer(mode, conn)
        except OSError:
            pass
        finally:
            conn.close()


class BadServer(socketserver.ThreadingTCPServer):
    """Answers `/MODE/v1/...` with that mode; any other path cycles through `cycle`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cycle: tuple[str, ...] = MODES) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._cycle = itertools.cycle(cycle)
        self.lock = threading.Lock()
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def mode_for(self, path: str) -> str:
        first = path.strip("/").split("/")[0]
        if first in MODES or first in NAMED_ONLY:
            return first
        if path.startswith("/v1/models"):
            return "html404"
        with self.lock:
            return next(self._cycle)


@contextmanager
def bad_server(cycle: tuple[str, ...] = MODES) -> Iterator[BadServer]:
    """Run a BadServer in a thread for the block; always shut down."""
    server = BadServer(cycle)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
