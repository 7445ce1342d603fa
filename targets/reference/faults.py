"""In-process faults of the reference target, each with an id and a TTL after which it
expires by itself: a chaos run that dies can never leave one behind for long.

Kinds: latency (added before the first token), slow_tokens (delay per token), error_rate
(HTTP 500/503 with a seeded probability), hang (accept and answer nothing), truncate (cut a
stream after N tokens, with or without an error frame), memory_leak (MB/s up to a cap, held
until removed or the process is recycled) and cpu_burn (busy threads in the process).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ActiveFault", "FaultSet", "FaultSpec"]

Kind = Literal["latency", "slow_tokens", "error_rate", "hang", "truncate", "memory_leak",
               "cpu_burn"]


class FaultSpec(BaseModel):
    """A fault as the admin API accepts it (unknown fields are refused, naming the field)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    target: str = Field(default="router",
                        description="`router`, or the id of a worker (router admin API)")
    ttl: float = Field(default=60.0, gt=0, le=86400, description="seconds until it expires")
    latency_s: float = Field(default=0.5, ge=0, le=600)
    delay_s: float = Field(default=0.05, ge=0, le=60)
    probability: float = Field(default=1.0, ge=0, le=1)
    status: Literal[500, 503] = 503
    seed: int = 0
    after_tokens: int = Field(default=5, ge=0)
    error_frame: bool = True
    mb_per_s: float = Field(default=50.0, gt=0, le=10000)
    cap_mb: float = Field(default=2048.0, gt=0, le=65536)
    threads: int = Field(default=1, ge=1, le=64)


@dataclass
class ActiveFault:
    """A fault in force: its spec, when it ends, and what it holds (leaked memory, threads)."""

    id: str
    spec: FaultSpec
    created_at: float
    expires_at: float
    rng: random.Random
    stop: threading.Event = field(default_factory=threading.Event)
    released: asyncio.Event | None = None
    held: list[bytearray] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, **self.spec.model_dump(), "created_at": self.created_at,
                "expires_at": self.expires_at,
                "remaining_s": round(max(0.0, self.expires_at - time.time()), 3),
                "held_mb": round(sum(len(b) for b in self.held) / 2**20, 1)}


class FaultSet:
    """The faults active in this process, with the hooks the request path calls."""

    def __init__(self) -> None:
        self.faults: dict[str, ActiveFault] = {}
        self._lock = threading.Lock()

    # -- admin --------------------------------------------------------------------------------

    def add(self, spec: FaultSpec, fault_id: str | None = None) -> ActiveFault:
        now = time.time()
        fault = ActiveFault(id=fault_id or uuid.uuid4().hex[:12], spec=spec, created_at=now,
                            expires_at=now + spec.ttl, rng=random.Random(spec.seed))
        if spec.kind == "hang":
            fault.released = asyncio.Event()
        with self._lock:
            self.faults[fault.id] = fault
        if spec.kind == "memory_leak":
            self._start(fault, self._leak)
        elif spec.kind == "cpu_burn":
            for _ in range(spec.threads):
                self._start(fault, self._burn)
        try:
            asyncio.get_running_loop().call_later(spec.ttl, self.remove, fault.id)
        except RuntimeError:
            pass  # no loop (unit tests): expiry is still checked on every access
        return fault

    def remove(self, fault_id: str) -> ActiveFault | None:
        with self._lock:
            fault = self.faults.pop(fault_id, None)
        if fault is None:
            return None
        fault.stop.set()
        if fault.released is not None:
            fault.released.set()
        for thread in fault.threads:
            thread.join(timeout=2)
        fault.held.clear()
        return fault

    def clear(self) -> int:
        ids = list(self.faults)
        for fault_id in ids:
            self.remove(fault_id)
        return len(ids)

    def active(self, kind: str | None = None) -> list[ActiveFault]:
        now = time.time()
        for fault in [f for f in self.faults.values() if f.expires_at <= now]:
            self.remove(fault.id)
        return [f for f in self.faults.values() if kind is None or f.spec.kind == kind]

    def public(self) -> list[dict[str, Any]]:
        return [f.public() for f in self.active()]

    # -- background actions -------------------------------------------------------------------

    def _start(self, fault: ActiveFault, body: Any) -> None:
        thread = threading.Thread(target=body, args=(fault,), daemon=True,
                                  name=f"fault-{fault.spec.kind}")
        fault.threads.append(thread)
        thread.start()

    @staticmethod
    def _leak(fault: ActiveFault) -> None:
        tick = 0.1
        step = int(fault.spec.mb_per_s * 2**20 * tick)
        cap = int(fault.spec.cap_mb * 2**20)
        held = 0
        while not fault.stop.wait(tick):
            if held + step > cap:
                continue
            # filled, not zeroed: zero pages would not count against the RSS
            fault.held.append(bytearray(b"\xa5") * step)
            held += step

    @staticmethod
    def _burn(fault: ActiveFault) -> None:
        x = 0
        while not fault.stop.is_set():
            for i in range(20000):
                x ^= i

    # -- hooks for the request path -----------------------------------------------------------

    def error(self) -> tuple[int, str] | None:
        """An HTTP error to answer with instead of serving, drawn with each fault's seeded RNG."""
        for fault in self.active("error_rate"):
            if fault.rng.random() < fault.spec.probability:
                return fault.spec.status, f"injected fault {fault.id}: error_rate"
        return None

    async def hang(self) -> None:
        """Wait while a hang fault is active: the request is accepted and answered nothing."""
        while True:
            hangs = self.active("hang")
            if not hangs:
                return
            released = hangs[0].released
            assert released is not None
            try:
                await asyncio.wait_for(released.wait(),
                                       max(0.05, hangs[0].expires_at - time.time()))
            except TimeoutError:
                pass

    def latency(self) -> float:
        return sum(f.spec.latency_s for f in self.active("latency"))

    def token_delay(self) -> float:
        return sum(f.spec.delay_s for f in self.active("slow_tokens"))

    def truncate(self) -> tuple[int, bool] | None:
        cuts = self.active("truncate")
        if not cuts:
            return None
        first = min(cuts, key=lambda f: f.spec.after_tokens)
        return first.spec.after_tokens, first.spec.error_frame
