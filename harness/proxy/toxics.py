"""Toxics: small stream transformers that sit on one direction of a proxied connection.

A toxic's configuration (`ToxicConfig`, Toxiproxy's JSON shape plus an optional `ttl`) is
separate from its per-connection state (`Toxic` instances, one per link it applies to). Each
kind implements `pipe(chunk, out)`: it may delay, slice, drop or hold a chunk, or close the link;
`close(out)` sees the end of the stream. A removed toxic is interrupted: its sleeps and holds
end at once and whatever it held goes on, so removing a toxic never drops data in flight.

Whether a toxic applies to a connection (`toxicity`) and every random draw it makes (jitter,
slice sizes) come from a seeded `random.Random` per connection and toxic.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import UsageError

__all__ = [
    "KINDS",
    "STREAMS",
    "Chunk",
    "LinkControl",
    "Out",
    "Toxic",
    "ToxicConfig",
    "make_toxic",
]

STREAMS = ("upstream", "downstream")


@dataclass(slots=True)
class Chunk:
    """Bytes read from one side, with the monotonic time they arrived (or were last released)."""

    data: bytes
    arrived: float


class Out(Protocol):
    """The rest of the chain after a toxic: the next toxic, or the destination socket."""

    async def write(self, chunk: Chunk) -> None: ...

    async def close(self) -> None: ...


class LinkControl(Protocol):
    """What a toxic may do to the connection it sits on."""

    def clock(self) -> float: ...

    def wake_at(self, deadline: float) -> asyncio.Future[None]: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle: ...

    def close(self) -> None: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class ToxicConfig:
    """A toxic as the API shows it (Toxiproxy's fields; `ttl` in seconds is our extension)."""

    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, float] = field(default_factory=dict)
    ttl: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "stream": self.stream,
                               "toxicity": self.toxicity, "attributes": dict(self.attributes)}
        if self.ttl is not None:
            out["ttl"] = self.ttl
        return out

    @classmethod
    def from_json(cls, data: Any, base: ToxicConfig | None = None) -> ToxicConfig:
        """Validate a JSON object; with `base` (an update) absent fields keep their values."""
        if not isinstance(data, dict):
            raise UsageError("a toxic must be a JSON object")
        kind = str(data.get("type", base.type if base else ""))
        if kind not in KINDS:
            raise UsageError(f"invalid toxic type {kind!r}: one of {', '.join(KINDS)}")
        stream = str(data.get("stream", base.stream if base else "downstream"))
        if stream not in STREAMS:
            raise UsageError("stream was invalid, can be either upstream or downstream")
        name = data.get("name") or (base.name if base else f"{kind}_{stream}")
        toxicity = _number(data.get("toxicity", base.toxicity if base else 1.0), "toxicity")
        if not 0.0 <= toxicity <= 1.0:
            raise UsageError(f"toxicity must be between 0 and 1, not {toxicity}")
        raw_attrs = data.get("attributes", {})
        if not isinstance(raw_attrs, dict):
            raise UsageError("attributes must be a JSON object")
        attrs = dict(KINDS[kind].defaults)
        if base is not None and base.type == kind:
            attrs.update(base.attributes)
        for key, value in raw_attrs.items():
            if key in attrs:  # like Toxiproxy, unknown attributes are ignored
                attrs[key] = _number(value, f"attributes.{key}")
                if attrs[key] < 0:
                    raise UsageError(f"attributes.{key} must not be negative")
        ttl_raw = data.get("ttl", base.ttl if base else None)
        ttl = None if ttl_raw is None else _number(ttl_raw, "ttl")
        if ttl is not None and ttl <= 0:
            raise UsageError("ttl must be a positive number of seconds")
        return cls(name=str(name), type=kind, stream=stream, toxicity=toxicity,
                   attributes=attrs, ttl=ttl)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{what} must be a number, not {value!r}")
    return float(value)


class Toxic:
    """One toxic on one connection: passes data through unchanged (the base behaviour)."""

    def __init__(self, config: Callable[[], ToxicConfig], link: LinkControl,
                 rng: random.Random) -> None:
        self._config = config
        self.link = link
        self.rng = rng
        self.interrupted = False
        self._waiting: asyncio.Future[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def attrs(self) -> Mapping[str, float]:
        """The toxic's attributes as configured now (an update applies at the next chunk)."""
        return self._config().attributes

    async def pipe(self, chunk: Chunk, out: Out) -> None:
        """Transform one chunk and pass what comes of it to `out`."""
        await out.write(chunk)

    async def close(self, out: Out) -> None:
        """The stream ended (or an earlier toxic ended it)."""
        await out.close()

    def start(self) -> None:
        """Called once when the toxic is attached to a connection (timers start here)."""

    def detachable(self) -> bool:
        """Whether an interrupted toxic can leave the chain without breaking the stream."""
        return True

    def interrupt(self) -> None:
        """The toxic was removed: wake whatever it waits for and cancel its timers."""
        self.interrupted = True
        for handle in self._timers:
            handle.cancel()
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` after `delay` seconds unless the toxic is removed first."""
        self._timers.append(self.link.call_later(delay, callback))

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until `deadline` (monotonic), or until the toxic is removed."""
        if self.interrupted or deadline <= self.link.clock():
            return
        self._waiting = self.link.wake_at(deadline)
        try:
            await self._waiting
        finally:
            self._waiting = None

    async def hold(self) -> None:
        """Wait until the toxic is removed."""
        if self.interrupted:
            return
        self._waiting = asyncio.get_running_loop().create_future()
        try:
            await self._waiting
        finally:
            self._waiting = None


class Latency(Toxic):
    """Delays every chunk by `latency` +/- `jitter` ms after it arrived; order is kept."""

    async def pipe(self, chunk: Chunk, out: Out) -> None:
        jitter = self.attrs["jitter"]
        delay = self.attrs["latency"] + (self.rng.uniform(-jitter, jitter) if jitter else 0.0)
        deadline = chunk.arrived + max(0.0, delay) / 1000.0
        await self.sleep_until(deadline)
        # a latency toxic after this one adds its delay to the release time, not the arrival
        chunk.arrived = max(chunk.arrived, min(deadline, self.link.clock()))
        await out.write(chunk)


class Bandwidth(Toxic):
    """At most `rate` KB/s (1 KB = 1000 bytes), in pieces of at most 100 ms each."""

    def __init__(self, config: Callable[[], ToxicConfig], link: LinkControl,
                 rng: random.Random) -> None:
        super().__init__(config, link, rng)
        self._free_at = 0.0

    async def pipe(self, chunk: Chunk, out: Out) -> None:
        data = chunk.data
        while data:
            rate = self.attrs["rate"] * 1000.0
            if rate <= 0 or self.interrupted:
                await out.write(Chunk(data, chunk.arrived))
                return
            piece, data = data[:max(1, int(rate / 10))], data[max(1, int(rate / 10)):]
            start = max(self.link.clock(), self._free_at)
            self._free_at = start + len(piece) / rate
            await self.sleep_until(self._free_at)
            await out.write(Chunk(piece, chunk.arrived))


class Slicer(Toxic):
    """Cuts chunks into slices of `average_size` +/- `size_variation` bytes, `delay` µs apart."""

    async def pipe(self, chunk: Chunk, out: Out) -> None:
        data = chunk.data
        while data:
            avg = int(self.attrs["average_size"])
            if avg <= 0 or self.interrupted:
                await out.write(Chunk(data, chunk.arrived))
                return
            var = int(min(self.attrs["size_variation"], avg - 1))
            size = max(1, avg + (self.rng.randint(-var, var) if var > 0 else 0))
            piece, data = data[:size], data[size:]
            await out.write(Chunk(piece, chunk.arrived))
            if data and self.attrs["delay"] > 0:
                await self.sleep_until(self.link.clock() + self.attrs["delay"] / 1e6)


class SlowClose(Toxic):
    """Delays the end of the stream (the close) by `delay` ms."""

    async def close(self, out: Out) -> None:
        await self.sleep_until(self.link.clock() + self.attrs["delay"] / 1000.0)
        await out.close()


class Timeout(Toxic):
    """Drops all data; closes the connection after `timeout` ms (never when 0)."""

    def start(self) -> None:
        if self.attrs["timeout"] > 0:
            self.later(self.attrs["timeout"] / 1000.0, self.link.close)

    async def pipe(self, chunk: Chunk, out: Out) -> None:
        if self.interrupted:
            await out.write(chunk)


class ResetPeer(Toxic):
    """Resets the connection (TCP RST) after `timeout` ms, at once when 0."""

    def start(self) -> None:
        self.later(self.attrs["timeout"] / 1000.0, self.link.reset)


class LimitData(Toxic):
    """Passes the first `bytes` bytes of the stream, then closes the connection."""

    def __init__(self, config: Callable[[], ToxicConfig], link: LinkControl,
                 rng: random.Random) -> None:
        super().__init__(config, link, rng)
        self._passed = 0

    async def pipe(self, chunk: Chunk, out: Out) -> None:
        limit = int(self.attrs["bytes"])
        if self.interrupted or limit <= 0:
            await out.write(chunk)
            return
        room = limit - self._passed
        if room > 0:
            piece = chunk.data[:room]
            self._passed += len(piece)
            await out.write(Chunk(piece, chunk.arrived))
        if self._passed >= limit:
            await out.close()


# --- LLM-aware toxics: they read HTTP/1.1 responses carrying server-sent events -----------

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _UNTIL_CLOSE = range(7)


class _SseResponses:
    """Splits a stream of HTTP/1.1 responses into raw bytes and SSE events.

    Hand-written rather than h11 because a proxy sees only one direction of the exchange and
    h11's state machine needs both. Chunked SSE bodies come out as events (re-chunked by the
    caller, one event per chunk); every other byte comes out unchanged.
    """

    def __init__(self) -> None:
        self.state = _HEAD
        self.buf = b""
        self.sse = False
        self.chunked = False
        self.left = 0
        self.event = b""  # the unfinished event of a chunked SSE body
        self.responses = 0

    def at_boundary(self) -> bool:
        """Nothing held back: raw bytes from here on keep the framing valid."""
        return not self.buf and not self.event and self.state in (_HEAD, _SIZE, _LENGTH,
                                                                  _UNTIL_CLOSE)

    def feed(self, data: bytes) -> list[bytes | tuple[bytes]]:
        """Raw byte strings, and events as 1-tuples, in stream order."""
        out: list[bytes | tuple[bytes]] = []
        self.buf += data
        while self.buf:
            if self.state == _HEAD:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, self.buf = self.buf[:end + 4], self.buf[end + 4:]
                out.append(head)
                self._start(head)
            elif self.state == _SIZE:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    break
                line, self.buf = self.buf[:end + 2], self.buf[end + 2:]
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:  # not HTTP as we know it: pass everything through
                    out.append(line)
                    self.state = _UNTIL_CLOSE
                    self.sse = False
                    continue
                if size == 0:
                    out.extend(self._flush_event())
                    out.append(line)
                    self.state = _TRAILER
                elif self.sse:
                    self.left, self.state = size, _DATA
                else:
                    out.append(line)
                    self.left, self.state = size, _DATA
            elif self.state == _DATA:
                piece, self.buf = self.buf[:self.left], self.buf[self.left:]
                self.left -= len(piece)
                if self.sse:
                    out.extend(self._events(piece))
                else:
                    out.append(piece)
                if self.left == 0:
                    self.state = _DATA_END
            elif self.state == _DATA_END:
                if len(self.buf) < 2:
                    break
                crlf, self.buf = self.buf[:2], self.buf[2:]
                if not self.sse:
                    out.append(crlf)
                self.state = _SIZE
            elif self.state == _TRAILER:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    break
                line, self.buf = self.buf[:end + 2], self.buf[end + 2:]
                out.append(line)
                if line == b"\r\n":
                    self.state = _HEAD
            elif self.state == _LENGTH:
                piece, self.buf = self.buf[:self.left], self.buf[self.left:]
                self.left -= len(piece)
                out.append(piece)
                if self.left == 0:
                    self.state = _HEAD
            else:  # _UNTIL_CLOSE
                piece, self.buf = self.buf, b""
                out.extend(self._events(piece) if self.sse else [piece])
        return out

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ")
        code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 200
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip().lower()
        self.responses += 1
        self.sse = headers.get("content-type", "").startswith("text/event-stream")
        self.chunked = "chunked" in headers.get("transfer-encoding", "")
        self.event = b""
        if code < 200 or code in (204, 304):
            self.state = _HEAD
        elif self.chunked:
            self.state = _SIZE
        elif "content-length" in headers:
            # a fixed-length body cannot change length: its events pass unchanged
            self.sse = False
            self.left = int(headers["content-length"] or 0)
            self.state = _LENGTH if self.left else _HEAD
        else:
            self.state = _UNTIL_CLOSE

    def _events(self, piece: bytes) -> list[bytes | tuple[bytes]]:
        self.event += piece
        out: list[bytes | tuple[bytes]] = []
        while (m := _EVENT_END.search(self.event)) is not None:
            out.append((self.event[:m.end()],))
            self.event = self.event[m.end():]
        return out

    def _flush_event(self) -> list[bytes | tuple[bytes]]:
        if not self.event:
            return []
        event, self.event = self.event, b""
        return [(event,)]


def _is_data_event(event: bytes) -> bool:
    return any(line.startswith(b"data:") for line in event.splitlines())


class _SseToxic(Toxic):
    """Base of the SSE toxics: counts the data events of each response on this connection."""

    def __init__(self, config: Callable[[], ToxicConfig], link: LinkControl,
                 rng: random.Random) -> None:
        super().__init__(config, link, rng)
        self.parser = _SseResponses()
        self.count = 0
        self._response = 0
        self._ended = False

    def detachable(self) -> bool:
        return self.parser.at_boundary()

    async def pipe(self, chunk: Chunk, out: Out) -> None:
        for piece in self.parser.feed(chunk.data):
            if self._ended:
                return
            if self.parser.responses != self._response:
                self._response, self.count = self.parser.responses, 0
            if isinstance(piece, bytes):
                await self.raw(piece, chunk, out)
                continue
            event = piece[0]
            framed = (b"%x\r\n" % len(event) + event + b"\r\n") if self.parser.chunked else event
            data_event = _is_data_event(event)
            await self.event(event, framed, data_event, chunk, out)
            if data_event:
                self.count += 1

    async def raw(self, piece: bytes, chunk: Chunk, out: Out) -> None:
        await out.write(Chunk(piece, chunk.arrived))

    async def event(self, event: bytes, framed: bytes, data_event: bool, chunk: Chunk,
                    out: Out) -> None:
        await out.write(Chunk(framed, chunk.arrived))


class SseStall(_SseToxic):
    """After `events` data events of a response, holds the rest until the toxic is removed."""

    async def raw(self, piece: bytes, chunk: Chunk, out: Out) -> None:
        await self._gate()
        await out.write(Chunk(piece, chunk.arrived))

    async def event(self, event: bytes, framed: bytes, data_event: bool, chunk: Chunk,
                    out: Out) -> None:
        await self._gate()
        await out.write(Chunk(framed, chunk.arrived))

    async def _gate(self) -> None:
        if self.parser.sse and self.count >= int(self.attrs["events"]):
            await self.hold()


class SseCut(_SseToxic):
    """After `events` data events of a response, closes the connection mid-stream."""

    async def event(self, event: bytes, framed: bytes, data_event: bool, chunk: Chunk,
                    out: Out) -> None:
        if not self.interrupted and self.count >= int(self.attrs["events"]):
            self._ended = True
            await out.close()
            return
        await out.write(Chunk(framed, chunk.arrived))


class SseDropDone(_SseToxic):
    """Removes the `data: [DONE]` event that ends an OpenAI-style stream."""

    async def event(self, event: bytes, framed: bytes, data_event: bool, chunk: Chunk,
                    out: Out) -> None:
        if not self.interrupted and event.strip() == b"data: [DONE]":
            return
        await out.write(Chunk(framed, chunk.arrived))


@dataclass(frozen=True)
class Kind:
    """A toxic type: its class and its attributes with their defaults."""

    cls: type[Toxic]
    defaults: Mapping[str, float]
    description: str


KINDS: dict[str, Kind] = {
    "latency": Kind(Latency, {"latency": 0.0, "jitter": 0.0},
                    "delay each chunk by latency +/- jitter (ms)"),
    "bandwidth": Kind(Bandwidth, {"rate": 0.0}, "limit to rate KB/s"),
    "slicer": Kind(Slicer, {"average_size": 0.0, "size_variation": 0.0, "delay": 0.0},
                   "slice into average_size +/- size_variation bytes, delay µs apart"),
    "slow_close": Kind(SlowClose, {"delay": 0.0}, "delay the close by delay ms"),
    "timeout": Kind(Timeout, {"timeout": 0.0},
                    "drop data; close after timeout ms (0: never, a black hole)"),
    "reset_peer": Kind(ResetPeer, {"timeout": 0.0}, "TCP RST after timeout ms"),
    "limit_data": Kind(LimitData, {"bytes": 0.0}, "close after bytes bytes"),
    "sse_stall": Kind(SseStall, {"events": 0.0},
                      "hold a stream after events SSE data events until removed"),
    "sse_cut": Kind(SseCut, {"events": 0.0}, "close the connection after events SSE events"),
    "sse_drop_done": Kind(SseDropDone, {}, "drop the data: [DONE] event"),
}


def make_toxic(config: Callable[[], ToxicConfig], link: LinkControl,
               rng: random.Random) -> Toxic:
    """A new per-connection instance of the toxic `config()` describes."""
    return KINDS[config().type].cls(config, link, rng)
