"""The HTTP/1.1 front of the router and the workers: uvicorn's httptools protocol with the
limits a server that faces untrusted clients needs and uvicorn lacks (with httptools it bounds
neither the header block nor the time a half-sent request may hold a connection).

- the request line and header block together at most MAX_HEADER_BYTES, and at most MAX_HEADERS
  header lines: past either, 431 and the connection closed, before the application sees it;
- a request must be read within `read_timeout` seconds: its head whole within that long of its
  first byte (or of the connection opening), else 408 and closed; its body never that long
  without a byte, else the connection closes and the application sees the client leave.
  Time the server itself stops reading (a pipelined request waiting for the one before it,
  uvicorn's flow control) does not count against the client.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEADERS", "MAX_HEADER_BYTES", "READ_TIMEOUT_S", "guarded_protocol"]

# Apache's LimitRequestFields is 100; nginx reads a header block of 4 x 8 KiB, Node 16 KiB.
# Headers of OpenAI clients and gateways (auth, tracing, user agents) are a few hundred bytes.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
# Apache's RequestReadTimeout allows 20-40 s for a head; a network, not a model, sets this.
READ_TIMEOUT_S = 30.0

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request the limits refuse."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits and a request-read timeout."""

    read_timeout: float = READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = True  # between a request's first byte (or the connection) and its head
        self._received = False
        self._refusal: tuple[int, str] | None = None

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received = True
        super().data_received(data)

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
        if self._read_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        if len(self.headers) >= MAX_HEADERS:
            self._refuse(431, f"more than {MAX_HEADERS} header lines")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers every parser error with this: a refusal of ours keeps its status."""
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, why = self._refusal
        client = self._who()
        print(f"http: {client}: {why}; answered {status}", file=sys.stderr, flush=True)
        self._send_and_close(status, why)

    # -- limits --------------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES:
            self._refuse(431, f"request line and headers larger than {MAX_HEADER_BYTES} bytes")

    def _refuse(self, status: int, why: str) -> None:
        self._refusal = (status, why)
        raise _Refused(why)

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the server is not reading, not the client not sending
            self._arm()
            return
        client = self._who()
        if self._in_head:
            if self._received:
                print(f"http: {client} sent no whole request head in {self.read_timeout:g} s; "
                      "answered 408", file=sys.stderr, flush=True)
                self._send_and_close(408, f"request head not received within "
                                          f"{self.read_timeout:g} s")
            else:  # opened and never used: nothing to answer
                self.transport.close()
            return
        print(f"http: {client} sent no byte of a request body in {self.read_timeout:g} s; "
              "connection closed", file=sys.stderr, flush=True)
        self.transport.close()  # the application sees the client leave (http.disconnect)

    def _who(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

    def _send_and_close(self, status: int, why: str) -> None:
        body = why.encode()
        self.transport.write(b"".join([
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            *(name + b": " + value + b"\r\n" for name, value in
              self.server_state.default_headers),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body]))
        self.transport.close()


def guarded_protocol(read_timeout: float = READ_TIMEOUT_S) -> type[GuardedHttpProtocol]:
    """The protocol class to hand uvicorn (`http=`), with this request-read timeout."""
    if read_timeout <= 0:
        raise ValueError(f"--request-read-timeout must be positive, not {read_timeout:g}")
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"read_timeout": read_timeout})
