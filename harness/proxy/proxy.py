"""The TCP proxy: listeners, links (one per client connection) and their two pipes.

A pipe with no toxics writes what it reads straight from the protocol callback, so the
pass-through costs no task switch. With toxics, chunks are timestamped on arrival and queued
for one worker task per pipe that runs them through the chain in order; the socket keeps being
read meanwhile (a latency toxic delays each chunk from its own arrival, so inter-chunk gaps are
kept), up to a bound that pauses reading (TCP backpressure).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from ..errors import UsageError
from .timer import PreciseTimer
from .toxics import Chunk, Toxic, ToxicConfig, make_toxic

__all__ = ["ApiError", "Proxy", "ProxyCollection", "ProxyConfig", "split_address"]

_HIGH_WATER = 4 * 1024 * 1024  # bytes queued in a pipe before the source is paused
_READ_SIZE = 64 * 1024


class ApiError(UsageError):
    """A request to the control API that cannot be honoured; `status` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port`, `:port`) to (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ApiError(f"address {address!r} is not host:port", 400)
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


@dataclass(frozen=True)
class ProxyConfig:
    """A proxy as the API shows it, without its toxics."""

    name: str
    listen: str
    upstream: str
    enabled: bool = True

    @classmethod
    def from_json(cls, data: Any, base: ProxyConfig | None = None) -> ProxyConfig:
        """Validate a JSON object; with `base` (an update) absent fields keep their values."""
        if not isinstance(data, dict):
            raise ApiError("bad request body: a proxy must be a JSON object", 400)
        name = data.get("name", base.name if base else "")
        upstream = data.get("upstream", base.upstream if base else "")
        listen = data.get("listen", base.listen if base else "127.0.0.1:0")
        enabled = data.get("enabled", base.enabled if base else True)
        if not name or not isinstance(name, str):
            raise ApiError("missing required field: name", 400)
        if not upstream or not isinstance(upstream, str):
            raise ApiError("missing required field: upstream", 400)
        if not isinstance(listen, str) or not isinstance(enabled, bool):
            raise ApiError("bad request body: listen is a string, enabled a boolean", 400)
        split_address(listen)
        split_address(upstream)
        return cls(name=name, listen=listen, upstream=upstream, enabled=enabled)


class _Side(asyncio.Protocol):
    """One socket of a link: the client's, or the upstream's."""

    def __init__(self, link: Link, which: str) -> None:
        self.link = link
        self.which = which
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.link.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.link.pipe_from(self).feed(data)

    def eof_received(self) -> bool:
        self.link.pipe_from(self).feed_eof()
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.link.pipe_to(self).dest_paused(True)

    def resume_writing(self) -> None:
        self.link.pipe_to(self).dest_paused(False)


class _Next:
    """The chain after toxic number `index` of a pipe (what that toxic's `out` is)."""

    __slots__ = ("chain", "index", "pipe")

    def __init__(self, pipe: Pipe, chain: tuple[Toxic, ...], index: int) -> None:
        self.pipe = pipe
        self.chain = chain
        self.index = index

    async def write(self, chunk: Chunk) -> None:
        await self.pipe.run_from(self.chain, self.index, chunk)

    async def close(self) -> None:
        await self.pipe.close_from(self.chain, self.index)


class Pipe:
    """One direction of a link: reads its source, runs the chain, writes its destination."""

    def __init__(self, link: Link, stream: str) -> None:
        self.link = link
        self.stream = stream
        self.source: asyncio.Transport | None = None
        self.dest: asyncio.Transport | None = None
        self.toxics: list[Toxic] = []
        self._queue: collections.deque[Chunk | None] = collections.deque()
        self._queued = 0
        self._worker: asyncio.Task[None] | None = None
        self._source_paused = False
        self._dest_ready = asyncio.get_running_loop().create_future()
        self._dest_ready.set_result(None)
        self.source_eof = False
        self.finished = False  # nothing more will be written to dest

    # -- reading side ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        # the fast path only while nothing is queued: bytes that arrived before the upstream
        # connection (or while the destination was paused) go first
        if (self.link.connected and not self.toxics and self._worker is None and not self._queue
                and self._dest_ready.done()):
            assert self.dest is not None
            self.dest.write(data)
            return
        self._queue.append(Chunk(data, self.link.clock()))
        self._queued += len(data)
        if self._queued > _HIGH_WATER:
            self._pause_source(True)
        self._kick()

    def feed_eof(self) -> None:
        if self.source_eof:
            return
        self.source_eof = True
        self._queue.append(None)
        self._kick()

    def _kick(self) -> None:
        if self._worker is None and self.link.connected:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def toxics_changed(self) -> None:
        """Drop interrupted toxics that can leave; wake the worker for queued data."""
        self.toxics = [t for t in self.toxics if not (t.interrupted and t.detachable())]
        if self._queue:
            self._kick()

    async def _work(self) -> None:
        try:
            while self._queue and not self.finished:
                item = self._queue.popleft()
                chain = tuple(self.toxics)
                if item is None:
                    await self.close_from(chain, 0)
                    continue
                self._queued -= len(item.data)
                await self.run_from(chain, 0, item)
                if self._source_paused and self._queued < _HIGH_WATER // 2:
                    self._pause_source(False)
                if any(t.interrupted for t in self.toxics):
                    self.toxics_changed()
        finally:
            self._worker = None
        if self._queue and not self.finished:
            self._kick()

    # -- the chain ---------------------------------------------------------------------------

    async def run_from(self, chain: tuple[Toxic, ...], index: int, chunk: Chunk) -> None:
        while index < len(chain) and chain[index].interrupted and chain[index].detachable():
            index += 1
        if self.finished:
            return
        if index < len(chain):
            await chain[index].pipe(chunk, _Next(self, chain, index + 1))
            return
        await self._write(chunk.data)

    async def close_from(self, chain: tuple[Toxic, ...], index: int) -> None:
        while index < len(chain) and chain[index].interrupted and chain[index].detachable():
            index += 1
        if self.finished:
            return
        if index < len(chain):
            await chain[index].close(_Next(self, chain, index + 1))
            return
        self.finished = True
        self._queue.clear()
        self.link.pipe_finished(self)

    async def _write(self, data: bytes) -> None:
        if not self._dest_ready.done():
            await self._dest_ready
        if self.dest is not None and not self.finished and data:
            self.dest.write(data)

    # -- flow control -------------------------------------------------------------------------

    def dest_paused(self, paused: bool) -> None:
        if paused and self._dest_ready.done():
            self._dest_ready = asyncio.get_running_loop().create_future()
        elif not paused and not self._dest_ready.done():
            self._dest_ready.set_result(None)
        self._pause_source(paused or self._queued > _HIGH_WATER)

    def _pause_source(self, paused: bool) -> None:
        if self.source is None or paused == self._source_paused:
            return
        self._source_paused = paused
        try:
            if paused:
                self.source.pause_reading()
            else:
                self.source.resume_reading()
        except RuntimeError:  # the transport is closing
            pass

    def abandon(self) -> None:
        """The destination is gone: nothing more can be written."""
        self.finished = True
        self._queue.clear()
        if not self._dest_ready.done():
            self._dest_ready.set_result(None)
        for toxic in self.toxics:
            toxic.interrupt()
        if self._worker is not None:
            self._worker.cancel()


class Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: Proxy, number: int) -> None:
        self.proxy = proxy
        self.number = number
        self.clock = proxy.clock
        self.up = Pipe(self, "upstream")  # client -> server
        self.down = Pipe(self, "downstream")  # server -> client
        self.client: _Side | None = None
        self.server: _Side | None = None
        self.closed = False
        self.connected = False  # both sockets made and the toxics attached: the pipes may run
        self._connecting: asyncio.Task[None] | None = None

    # LinkControl, for the toxics
    def wake_at(self, deadline: float) -> asyncio.Future[None]:
        return self.proxy.timer.at(deadline)

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)

    def close(self) -> None:
        """Close both sockets (FIN), after what was already written to them."""
        self._end(reset=False)

    def reset(self) -> None:
        """Reset both sockets (TCP RST): SO_LINGER 0, then abort."""
        self._end(reset=True)

    def _end(self, *, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in (self.up, self.down):
            pipe.abandon()
        for side in (self.client, self.server):
            if side is None or side.transport is None:
                continue
            if not reset:
                side.transport.close()
                continue
            sock = side.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            side.transport.abort()
        if self._connecting is not None:
            self._connecting.cancel()
        self.proxy.links.discard(self)

    # wiring
    def pipe_from(self, side: _Side) -> Pipe:
        return self.up if side is self.client else self.down

    def pipe_to(self, side: _Side) -> Pipe:
        return self.down if side is self.client else self.up

    def side_made(self, side: _Side) -> None:
        if side.which == "client":
            self.client = side
            self.up.source = side.transport
            self.down.dest = side.transport
            assert side.transport is not None
            side.transport.pause_reading()  # until the upstream is connected
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        else:
            self.server = side
            self.down.source = side.transport
            self.up.dest = side.transport

    async def _connect(self) -> None:
        host, port = split_address(self.proxy.config.upstream)
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Side(self, "server"), host, port)
        except OSError:
            self.close()
            return
        finally:
            self._connecting = None
        if self.closed:
            if self.server is not None and self.server.transport is not None:
                self.server.transport.close()
            return
        self.proxy.attach_all(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.resume_reading()
        self.connected = True
        for pipe in (self.up, self.down):
            pipe._kick()

    def pipe_finished(self, pipe: Pipe) -> None:
        """Nothing more goes to `pipe`'s destination: its source ended, or a toxic ended it."""
        if not pipe.source_eof:  # a toxic ended the stream: the whole link goes
            self.close()
            return
        dest = pipe.dest
        if dest is not None and dest.can_write_eof():
            try:
                dest.write_eof()
            except (OSError, RuntimeError):
                self.close()
                return
        if self.up.finished and self.down.finished:
            self.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.closed:
            return
        if exc is not None:  # reset or error: pass the abort on
            self.reset()
            return
        self.pipe_to(side).abandon()
        self.pipe_from(side).feed_eof()
        if self.up.finished and self.down.finished:
            self.close()


@dataclass
class _ToxicEntry:
    """A toxic on a proxy: its live configuration and its per-connection instances."""

    config: ToxicConfig
    instances: list[tuple[Link, Toxic]] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None


class Proxy:
    """A listener that forwards every connection to `upstream` through its toxics."""

    def __init__(self, config: ProxyConfig, timer: PreciseTimer, seed: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.timer = timer
        self.seed = seed
        self.clock = clock
        self.toxics: dict[str, _ToxicEntry] = {}
        self.links: set[Link] = set()
        self._server: asyncio.Server | None = None
        self._numbers = itertools.count()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.config.name, "listen": self.config.listen,
                "upstream": self.config.upstream, "enabled": self.config.enabled,
                "toxics": self.toxics_json()}

    def toxics_json(self) -> list[dict[str, Any]]:
        return [entry.config.to_json() for entry in self.toxics.values()]

    # -- listening ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        host, port = split_address(self.config.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._accept, host, port,
                                                    reuse_address=True)
        except OSError as exc:
            raise ApiError(f"listen {self.config.listen}: {exc.strerror or exc}", 500) from exc
        bound = self._server.sockets[0].getsockname()
        if port == 0:
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            self.config = ProxyConfig(self.config.name, f"{shown}:{bound[1]}",
                                      self.config.upstream, self.config.enabled)

    async def stop(self) -> None:
        """Stop listening and close every connection (the `down` state)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self.links):
            link.close()

    def _accept(self) -> _Side:
        link = Link(self, next(self._numbers))
        self.links.add(link)
        return _Side(link, "client")

    async def update(self, config: ProxyConfig) -> None:
        """Apply new fields: a new address restarts the proxy, `enabled` takes it down/up."""
        moved = (config.listen, config.upstream) != (self.config.listen, self.config.upstream)
        if moved or not config.enabled:
            await self.stop()
        self.config = config
        if config.enabled:
            await self.start()

    # -- toxics ------------------------------------------------------------------------------

    def _rng(self, link: Link, toxic: str) -> random.Random:
        return random.Random(f"{self.seed}/{self.config.name}/{link.number}/{toxic}")

    def attach_all(self, link: Link) -> None:
        for entry in self.toxics.values():
            self._attach(entry, link)

    def _attach(self, entry: _ToxicEntry, link: Link) -> None:
        name = entry.config.name
        rng = self._rng(link, name)
        if rng.random() >= entry.config.toxicity:
            return

        def config(entry: _ToxicEntry = entry) -> ToxicConfig:
            return entry.config

        toxic = make_toxic(config, link, rng)
        entry.instances.append((link, toxic))
        pipe = link.up if entry.config.stream == "upstream" else link.down
        pipe.toxics.append(toxic)
        toxic.start()

    def add_toxic(self, config: ToxicConfig) -> None:
        if config.name in self.toxics:
            raise ApiError("toxic already exists", 409)
        entry = _ToxicEntry(config)
        self.toxics[config.name] = entry
        self._schedule_expiry(entry)
        for link in list(self.links):
            if link.server is not None and not link.closed:
                self._attach(entry, link)

    def update_toxic(self, name: str, data: Any) -> ToxicConfig:
        entry = self._entry(name)
        config = ToxicConfig.from_json({**data, "name": name}, base=entry.config)
        if config.type != entry.config.type or config.stream != entry.config.stream:
            raise ApiError("a toxic's type and stream cannot change: remove and add it", 400)
        entry.config = config
        self._schedule_expiry(entry)
        return config

    def remove_toxic(self, name: str) -> None:
        entry = self.toxics.pop(name, None)
        if entry is None:
            raise ApiError("toxic not found", 404)
        if entry.expiry is not None:
            entry.expiry.cancel()
        pipes: set[Pipe] = set()
        for link, toxic in entry.instances:
            toxic.interrupt()
            pipes.add(link.up if entry.config.stream == "upstream" else link.down)
        for pipe in pipes:
            pipe.toxics_changed()

    def reset_toxics(self) -> None:
        for name in list(self.toxics):
            self.remove_toxic(name)

    def _entry(self, name: str) -> _ToxicEntry:
        entry = self.toxics.get(name)
        if entry is None:
            raise ApiError("toxic not found", 404)
        return entry

    def toxic(self, name: str) -> ToxicConfig:
        return self._entry(name).config

    def _schedule_expiry(self, entry: _ToxicEntry) -> None:
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None
        if entry.config.ttl is not None:
            name = entry.config.name

            def expire() -> None:
                if self.toxics.get(name) is entry:
                    self.remove_toxic(name)

            entry.expiry = asyncio.get_running_loop().call_later(entry.config.ttl, expire)


class ProxyCollection:
    """Every proxy of this process, by name; the state behind the control API."""

    def __init__(self, seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.seed = seed
        self.clock = clock
        self.proxies: dict[str, Proxy] = {}
        self._timer: PreciseTimer | None = None

    @property
    def timer(self) -> PreciseTimer:
        if self._timer is None:
            self._timer = PreciseTimer(asyncio.get_running_loop(), self.clock)
        return self._timer

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError("proxy not found", 404)
        return proxy

    async def add(self, config: ProxyConfig) -> Proxy:
        if config.name in self.proxies:
            raise ApiError("proxy already exists", 409)
        proxy = Proxy(config, self.timer, self.seed, self.clock)
        if config.enabled:
            await proxy.start()
        self.proxies[config.name] = proxy
        return proxy

    async def remove(self, name: str) -> None:
        proxy = self.get(name)
        proxy.reset_toxics()
        await proxy.stop()
        del self.proxies[name]

    async def populate(self, configs: list[ProxyConfig]) -> list[Proxy]:
        """Create each proxy, replacing one of the same name whose addresses differ."""
        out = []
        for config in configs:
            old = self.proxies.get(config.name)
            if old is not None and (old.config.listen, old.config.upstream) == (
                    config.listen, config.upstream):
                if old.config.enabled != config.enabled:
                    await old.update(config)
                out.append(old)
                continue
            if old is not None:
                await self.remove(config.name)
            out.append(await self.add(config))
        return out

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in self.proxies.values():
            proxy.reset_toxics()
            if not proxy.config.enabled:
                await proxy.update(ProxyConfig(proxy.config.name, proxy.config.listen,
                                               proxy.config.upstream, True))

    async def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.reset_toxics()
            await proxy.stop()
        if self._timer is not None:
            self._timer.close()
