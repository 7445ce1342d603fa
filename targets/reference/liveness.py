"""How long a busy engine may go without a step before it counts as stalled, and how many torch
threads a worker gets: both derived from this machine, not tuned to one.

A fixed stall timeout declares a slow but working worker lost: on a CPU without native bf16, or
with another process on a core, one decode step of SmolLM2 can take seconds. So the limit follows
the engine's own measured step times: no step for STALL_STEPS times the slowest recent step (and
never less than the configured floor). A step that never ends is not measured, so a stuck engine
is still caught at the limit its earlier steps set.
"""

from __future__ import annotations

import collections
import os

__all__ = ["STALL_STEPS", "StepTimes", "threads_per_worker", "usable_cores"]

STALL_STEPS = 10  # a stall is this many times the slowest recent step without one


class StepTimes:
    """The durations of an engine's last `keep` steps, and the stall limit they imply."""

    def __init__(self, floor: float, keep: int = 64) -> None:
        self.floor = floor
        self._recent: collections.deque[float] = collections.deque(maxlen=keep)

    def record(self, seconds: float) -> None:
        self._recent.append(seconds)

    @property
    def slowest(self) -> float:
        """The slowest of the recent steps, in seconds (0 before the first)."""
        return max(self._recent, default=0.0)

    @property
    def stall_limit(self) -> float:
        """Seconds a busy engine may go without completing a step before it is stalled."""
        return max(self.floor, STALL_STEPS * self.slowest)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of `workers` workers sharing the machine: the cores split between
    them. Each worker taking every core runs cores x workers OpenMP threads, whose spin-waits
    starve one another (two SmolLM2 workers on 2 cores: ITL p95 2.8 s instead of ~0.1 s)."""
    return max(1, (cores or usable_cores()) // max(1, workers))
