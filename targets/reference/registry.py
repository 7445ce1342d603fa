"""The service registry: the fleet's workers, their state, and the events the fleet emits.

A worker is routable only while `live`. Liveness is judged by the supervisor from the worker's
engine progress (see supervisor.py), not from a bare HTTP 200.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EventBus", "Registry", "WorkerInfo", "WorkerState"]


class WorkerState:
    """Worker states; only LIVE workers receive requests."""

    STARTING = "starting"
    LIVE = "live"
    UNLIVE = "unlive"  # running but not progressing or not answering (paused, hung)
    DRAINING = "draining"  # finishing in-flight requests before a stop or a recycle
    DEAD = "dead"  # process exited; the supervisor restarts it


@dataclass
class WorkerInfo:
    """One worker process of the fleet, as the registry knows it."""

    id: str
    model: str
    port: int
    pid: int = 0
    host: str = "127.0.0.1"
    state: str = WorkerState.STARTING
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    ongoing: int = 0
    rss_bytes: int = 0
    private_bytes: int = 0  # RSS less file-backed and shared pages (the memory limit's measure)
    last_seen: float = 0.0  # monotonic time of the last answered probe
    last_step: int = -1
    last_progress: float = 0.0  # monotonic time the engine's step counter last moved
    engine_busy: bool = False
    step_s_max: float = 0.0  # the engine's slowest recent step, as last probed
    stall_after: float = 0.0  # seconds without a step (while busy) the engine itself allows
    prompt_tokens: int = 0  # the engine's counters, as last probed (reset by a restart)
    generated_tokens: int = 0
    crash_times: list[float] = field(default_factory=list)
    became_live: bool = False  # since the last (re)start

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "port": self.port, "model": self.model,
                "state": self.state, "rss_bytes": self.rss_bytes,
                "private_bytes": self.private_bytes, "ongoing": self.ongoing,
                "started_at": self.started_at, "restarts": self.restarts}


class EventBus:
    """Registry, restart and scaling events: kept (bounded) and fanned out to subscribers."""

    def __init__(self, keep: int = 10000) -> None:
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._seq = 0
        self.on_emit: Callable[[dict[str, Any]], None] = lambda event: None

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        event = {"seq": self._seq, "time": time.time(), "type": kind, **fields}
        self.events.append(event)
        self.on_emit(event)
        for queue in list(self._subscribers):
            queue.put_nowait(event)
        return event

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)


class Registry:
    """Workers by id; least-outstanding-requests selection among the live ones of a model."""

    def __init__(self, events: EventBus) -> None:
        self.workers: dict[str, WorkerInfo] = {}
        self.events = events
        self.changed = asyncio.Event()

    def add(self, worker: WorkerInfo) -> None:
        self.workers[worker.id] = worker
        self.events.emit("registered", worker=worker.id, model=worker.model, port=worker.port,
                         pid=worker.pid)

    def remove(self, worker_id: str) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is not None:
            self.events.emit("deregistered", worker=worker_id, model=worker.model)
        self._notify()

    def set_state(self, worker: WorkerInfo, state: str, reason: str = "",
                  **fields: Any) -> None:
        """Move `worker` to `state`, emitting a `state` event (with `fields`, e.g. an exit
        status) when it changes."""
        if worker.state == state:
            return
        old, worker.state = worker.state, state
        self.events.emit("state", worker=worker.id, model=worker.model, pid=worker.pid,
                         old=old, new=state, reason=reason, **fields)
        self._notify()

    def _notify(self) -> None:
        # wake whoever waits for a routable worker, then re-arm
        self.changed.set()
        self.changed = asyncio.Event()

    def models(self) -> list[str]:
        return sorted({w.model for w in self.workers.values()})

    def of_model(self, model: str) -> list[WorkerInfo]:
        return [w for w in self.workers.values() if w.model == model]

    def pick(self, model: str, capacity: int, exclude: set[str] | frozenset[str] = frozenset()
             ) -> WorkerInfo | None:
        """The live worker of `model` with the fewest ongoing requests, if one has room."""
        candidates = [w for w in self.workers.values()
                      if w.model == model and w.state == WorkerState.LIVE
                      and w.id not in exclude and w.ongoing < capacity]
        if not candidates:
            return None
        return min(candidates, key=lambda w: (w.ongoing, w.id))

    def release(self) -> None:
        self._notify()
