"""Open-loop arrival schedules: when each request is due, independent of when answers come.

Users take the next due time from one shared schedule and send as soon as they are free; a
record keeps both the due time (`scheduled_at`) and the real send time (`sent_at`), so when the
target (or the user pool) cannot keep up, the lag is in the history instead of being hidden
(coordinated omission).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["ArrivalSchedule", "parse_arrival"]

KINDS = ("closed", "poisson", "constant")


@dataclass
class ArrivalSchedule:
    """Due times (seconds, on the caller's clock) of a Poisson or constant-rate process."""

    kind: str
    rate: float
    rng: random.Random
    start: float | None = None
    _next: float | None = None
    issued: int = 0

    def next_due(self, now: float) -> float:
        """The due time of the next request; the first is `now` (the schedule starts there)."""
        if self._next is None:
            self.start = now
            self._next = now
        due = self._next
        gap = self.rng.expovariate(self.rate) if self.kind == "poisson" else 1.0 / self.rate
        self._next = due + gap
        self.issued += 1
        return due


def parse_arrival(kind: str, rate: float | None, rng: random.Random) -> ArrivalSchedule | None:
    """None for closed loop; raises UsageError for an unknown kind or a missing rate."""
    if kind == "closed":
        return None
    if kind not in KINDS:
        raise UsageError(f"--arrival {kind}: choose one of {', '.join(KINDS)}")
    if rate is None or rate <= 0:
        raise UsageError(f"--arrival {kind} needs --rate R (requests per second, > 0)")
    return ArrivalSchedule(kind, rate, rng)
