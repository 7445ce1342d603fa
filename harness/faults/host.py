"""Host faults: CPU hog and memory hog processes, bounded in size and time, killed on revert."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import psutil

from ..errors import TargetError, UsageError
from ..target import Target
from .base import Effect, Ledger, revert_effect
from .heal import KillProcess

__all__ = ["CpuHog", "MemoryHog"]

MAX_MEMORY_FRACTION = 0.5  # of the memory available when the fault is validated / injected

# Popen objects of live hogs: kept so they are reaped on revert, not warned about when dropped
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _forget(effect: Effect) -> None:
    for pid in effect.value.get("pids", []):
        proc = _STARTED.pop(int(pid), None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _STARTED[int(pid)] = proc


def _spawn(args: list[str], ttl: float, ledger: Ledger) -> int:
    cmd = [sys.executable, "-m", "harness.faults", "hog", *args, "--seconds", f"{ttl:.3f}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _STARTED[proc.pid] = proc
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess as exc:
        raise TargetError(f"hog {' '.join(args)} exited at once") from exc
    # noted right after the spawn (the PID is not known before); the hog's own TTL covers it
    ledger.note(KillProcess(proc.pid, create_time))
    return proc.pid


class _Hog:
    """What every hog shares: its processes are killed on revert, and forgotten."""

    def revert(self, target: Target, effect: Effect) -> None:
        revert_effect(effect)
        _forget(effect)


@dataclass(frozen=True)
class CpuHog(_Hog):
    """`processes` busy-looping processes, each burning one CPU for the fault's TTL."""

    name: ClassVar[str] = "host-cpu-hog"
    processes: int = 1

    def validate(self, target: Target) -> None:
        cpus = psutil.cpu_count() or 1
        if not 1 <= self.processes <= 4 * cpus:
            raise UsageError(f"cpu hog processes must be between 1 and {4 * cpus} (4 per CPU), "
                             f"not {self.processes}")

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        pids = [_spawn(["cpu"], ledger.ttl, ledger) for _ in range(self.processes)]
        return ledger.effect({"processes": self.processes, "pids": pids})


@dataclass(frozen=True)
class MemoryHog(_Hog):
    """One process holding `mb` MiB (filled, so it is resident) for the fault's TTL."""

    name: ClassVar[str] = "host-memory-hog"
    mb: int = 256

    def _limit(self) -> int:
        return int(psutil.virtual_memory().available * MAX_MEMORY_FRACTION // 2**20)

    def validate(self, target: Target) -> None:
        if self.mb < 1:
            raise UsageError(f"memory hog mb must be at least 1, not {self.mb}")
        if self.mb > self._limit():
            raise UsageError(f"memory hog mb={self.mb} is more than half the memory available "
                             f"now ({self._limit()} MiB); ask for less")

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        if self.mb > self._limit():
            raise TargetError(f"memory hog mb={self.mb}: only {self._limit()} MiB may be taken "
                              "now (half the available memory)")
        pid = _spawn(["memory", "--mb", str(self.mb)], ledger.ttl, ledger)
        return ledger.effect({"mb": self.mb, "pids": [pid]})
