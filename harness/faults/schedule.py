"""When faults happen (at / for / every) and when a run stops early (abort conditions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from ..errors import HarnessError, UsageError
from ..target import Target
from .base import Fault

__all__ = ["AbortCondition", "NoLiveWorkers", "RouterUnhealthy", "Step"]


@dataclass(frozen=True)
class Step:
    """Inject `fault` `at` seconds after the start, keep it `duration` seconds (`for`), and
    again `every` seconds (at most `times` injections) while the run lasts."""

    fault: Fault
    at: float = 0.0
    duration: float = 10.0
    every: float | None = None
    times: int | None = None

    def check(self, index: int) -> None:
        """UsageError naming the field that is wrong."""
        where = f"schedule[{index}] ({self.fault.name})"
        if self.at < 0:
            raise UsageError(f"{where}: `at` must be 0 or more, not {self.at}")
        if self.duration <= 0:
            raise UsageError(f"{where}: `for` must be more than 0, not {self.duration}")
        if self.every is not None and self.every <= 0:
            raise UsageError(f"{where}: `every` must be more than 0, not {self.every}")
        if self.times is not None and self.times < 1:
            raise UsageError(f"{where}: `times` must be at least 1, not {self.times}")

    def starts(self, run_for: float) -> list[float]:
        """Offsets (seconds from the start) of this step's injections within a run."""
        out: list[float] = []
        t = self.at
        while t < run_for and (self.times is None or len(out) < self.times):
            out.append(t)
            if self.every is None:
                break
            t += self.every
        return out


class AbortCondition(Protocol):
    """Checked while faults run: a reason to stop (and revert everything), or None."""

    def check(self, target: Target) -> str | None:
        ...


class _Sustained:
    """Abort when `healthy(target)` has been false for `seconds` in a row."""

    what = ""  # how the reason reads: "<what> for N s"

    def __init__(self, seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._since: float | None = None

    def healthy(self, target: Target) -> bool:
        raise NotImplementedError

    def check(self, target: Target) -> str | None:
        if self.healthy(target):
            self._since = None
            return None
        now = self.clock()
        self._since = now if self._since is None else self._since
        if now - self._since >= self.seconds:
            return f"{self.what} for {self.seconds:g} s"
        return None


class NoLiveWorkers(_Sustained):
    """Abort when the target has had no live worker for `seconds`."""

    what = "no live worker"

    def healthy(self, target: Target) -> bool:
        try:
            return any(w.state == "live" for w in target.workers())
        except HarnessError:
            return False


class RouterUnhealthy(_Sustained):
    """Abort when the router's `/health` has not answered 200 for `seconds`."""

    what = "router unhealthy"

    def healthy(self, target: Target) -> bool:
        try:
            return httpx.get(target.url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False
