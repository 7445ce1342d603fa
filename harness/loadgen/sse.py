"""Incremental Server-Sent Events decoder that works on bytes as they come off the socket.

Hand-written on purpose (httpx-sse and sseclient parse from an iterator of lines): the load
generator timestamps each network read, so it needs a decoder that accepts an arbitrary byte
chunk and returns the events that chunk completed, without waiting for more.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["SSEDecoder", "SSEEvent", "aiter_events", "iter_events", "json_objects"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its `data` (lines joined by newlines) and its `event` name."""

    data: str
    event: str = "message"


class SSEDecoder:
    """Feed bytes, get the events they complete (WHATWG rules: LF, CRLF or CR end a line)."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._has_field = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode `chunk`; return the events completed by it, in order."""
        buf = self._buf + chunk
        if b"\r" in buf:
            # A CR at the very end may be the first half of a CRLF split across reads.
            tail = b"\r" if buf.endswith(b"\r") else b""
            if tail:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            self._line(buf[start:end], events)
            start = end + 1
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bool:
        """Whether bytes or fields of an unfinished event are buffered."""
        return bool(self._buf.strip()) or self._has_field

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._has_field:
                events.append(SSEEvent("\n".join(self._data), self._event or "message"))
            self._data = []
            self._event = ""
            self._has_field = False
            return
        if raw.startswith(b":"):
            return
        line = raw.decode("utf-8", errors="replace")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_field = True
        elif name == "event":
            self._event = value


def iter_events(chunks: Iterable[bytes]) -> Iterator[SSEEvent]:
    """The events of a stream read in chunks (httpx's `iter_bytes()`, or a whole body as one)."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.feed(b"\n\n")  # a last event without its blank line


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """`iter_events` for an async stream (httpx's `aiter_bytes()`)."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.feed(b"\n\n"):
        yield event


def json_objects(body: bytes) -> list[dict[str, Any]]:
    """The JSON objects a whole SSE body carries (`/admin/events`); other data is skipped."""
    found: list[dict[str, Any]] = []
    for event in iter_events([body]):
        try:
            value = json.loads(event.data)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found
