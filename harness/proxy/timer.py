"""Sub-millisecond wake-ups for the event loop.

asyncio's timers round up to whole milliseconds (epoll's resolution), which alone would spend
the +/-1 ms budget of a latency toxic. One thread sleeps until the earliest deadline with
`threading.Condition.wait` (sub-millisecond on Linux) and resolves the futures that are due
through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["PreciseTimer"]


class PreciseTimer:
    """Resolves asyncio futures at monotonic deadlines, from one helper thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = loop
        self._clock = clock
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="proxy-timer", daemon=True)
        self._thread.start()

    def at(self, deadline: float) -> asyncio.Future[None]:
        """A future that is resolved at `deadline` (on `clock`), or by whoever holds it."""
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline, next(self._seq), fut))
            if earliest is None or deadline < earliest:
                self._cond.notify()
        return fut

    def close(self) -> None:
        """Stop the thread; pending futures are left unresolved."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - self._clock()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return
                now = self._clock()
                due: list[asyncio.Future[None]] = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
            try:
                self._loop.call_soon_threadsafe(_resolve, due)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)
