"""A TCP proxy that timestamps every read in both directions: an independent stopwatch.

Used as the oracle when the server keeps no record of its own (e.g. `transformers serve`): the
proxy's clock is the same monotonic clock as the load generator's.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

_REQUEST_ID = re.compile(rb"(?i)x-request-id: ([0-9a-f-]{36})")
_CONTENT = re.compile(rb'"content":\s?"[^"]')


@dataclass
class Tap:
    """What went through one connection: (time, bytes) per read, in each direction."""

    upstream: list[tuple[float, bytes]] = field(default_factory=list)
    downstream: list[tuple[float, bytes]] = field(default_factory=list)

    def first_content_times(self) -> dict[str, tuple[float, float]]:
        """request id -> (request arrival, first content-bearing bytes arrival)."""
        requests: list[tuple[float, str]] = []
        for t, data in self.upstream:
            requests += [(t, m.group(1).decode()) for m in _REQUEST_ID.finditer(data)]
        found: dict[str, tuple[float, float]] = {}
        for i, (t_req, rid) in enumerate(requests):
            t_next = requests[i + 1][0] if i + 1 < len(requests) else float("inf")
            buf = b""
            ends: list[tuple[int, float]] = []
            for t, data in self.downstream:
                if t_req <= t < t_next:
                    buf += data
                    ends.append((len(buf), t))
            match = _CONTENT.search(buf)
            if match is not None:
                arrival = next(t for end, t in ends if end >= match.end())
                found[rid] = (t_req, arrival)
        return found


class TapProxy:
    """Forwards 127.0.0.1:<port> to `upstream`, recording every read."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.taps: list[Tap] = []
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._closing = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, upstream]
            tap = Tap()
            self.taps.append(tap)
            for src, dst, log in ((client, upstream, tap.upstream),
                                  (upstream, client, tap.downstream)):
                th = threading.Thread(target=_pump, args=(src, dst, log), daemon=True)
                th.start()
                self._threads.append(th)

    def close(self) -> None:
        self._closing = True
        self.listener.close()
        for s in self._socks:
            with suppress(OSError):
                s.close()

    def first_content_times(self) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        for tap in self.taps:
            out.update(tap.first_content_times())
        return out


def _pump(src: socket.socket, dst: socket.socket, log: list[tuple[float, bytes]]) -> None:
    try:
        while True:
            data = src.recv(65536)
            t = time.monotonic()
            if not data:
                break
            log.append((t, data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextmanager
def tap_proxy(upstream_port: int) -> Iterator[TapProxy]:
    proxy = TapProxy(upstream_port)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
