"""Process faults: SIGKILL, SIGTERM or SIGSTOP (reverted with SIGCONT) of the target's own
processes: a worker, several workers, or the router, found through the target's registry and
the router's process tree. Any other PID is refused before anything is signalled."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Literal

import psutil

from ..errors import TargetError, UsageError
from ..target import Target
from .base import Effect, Ledger, one_of, revert_effect
from .heal import ResumeProcess

__all__ = ["ProcessFault", "Victims"]

Action = Literal["kill", "terminate", "pause"]
_ACTIONS = ("kill", "terminate", "pause")


@dataclass(frozen=True)
class Victims:
    """Which processes: `count` random workers (among `workers` if given), the router, or
    explicit `pids` (each must belong to the target)."""

    role: Literal["worker", "router"] = "worker"
    count: int = 1
    workers: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ProcessFault:
    """kill / terminate / pause of target processes (pause is reverted by SIGCONT)."""

    action: Action
    victims: Victims = Victims()

    @property
    def name(self) -> str:
        return f"process-{self.action}"

    def validate(self, target: Target) -> None:
        one_of("process fault action", self.action, _ACTIONS)
        if self.victims.role not in ("worker", "router"):
            raise UsageError(f"victims.role {self.victims.role!r}: use `worker` or `router`")
        if self.victims.count < 1:
            raise UsageError(f"victims.count must be at least 1, not {self.victims.count}")
        owned = target.processes()
        _refuse_foreign(self.victims.pids, owned, target)
        known = {w.id for w in target.workers()}
        unknown = [w for w in self.victims.workers if w not in known]
        if unknown:
            raise UsageError(f"victims.workers: no worker {', '.join(unknown)} in the target; "
                             f"it has {', '.join(sorted(known)) or 'none'}")

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        owned = target.processes()
        chosen = self._choose(target, owned, rng, ledger)
        done: list[dict[str, object]] = []
        for pid, role in chosen:
            try:
                proc = psutil.Process(pid)
                if self.action == "pause":
                    ledger.note(ResumeProcess(pid, proc.create_time()))
                    proc.suspend()
                    _wait_stopped(proc)
                elif self.action == "terminate":
                    proc.terminate()
                else:
                    proc.kill()
            except psutil.NoSuchProcess as exc:
                raise TargetError(f"{self.action}: pid {pid} ({role}) exited before it was "
                                  "signalled") from exc
            if role not in ("router", "child"):
                ledger.take(role)
            done.append({"pid": pid, "role": role})
        return ledger.effect({"action": self.action, "victims": done})

    def revert(self, target: Target, effect: Effect) -> None:
        # kill / terminate leave nothing to undo (the target's supervisor restarts workers)
        revert_effect(effect)

    def _choose(self, target: Target, owned: dict[int, str], rng: random.Random,
                ledger: Ledger) -> list[tuple[int, str]]:
        if self.victims.pids:
            _refuse_foreign(self.victims.pids, owned, target)
            return [(pid, owned[pid]) for pid in self.victims.pids]
        if self.victims.role == "router":
            router = next(pid for pid, role in owned.items() if role == "router")
            return [(router, "router")]
        eligible = sorted((w for w in target.workers()
                           if w.pid in owned and w.state != "dead" and w.id not in ledger.busy
                           and (not self.victims.workers or w.id in self.victims.workers)),
                          key=lambda w: w.id)
        count = self.victims.count
        if ledger.worker_budget is not None:
            count = min(count, ledger.worker_budget)
        if count < 1 or not eligible:
            raise TargetError(f"{self.name}: no eligible worker (blast radius or none live)")
        picked = rng.sample(eligible, min(count, len(eligible)))
        return [(w.pid, w.id) for w in picked]


def _wait_stopped(proc: psutil.Process, timeout: float = 2.0) -> None:
    # SIGSTOP is delivered asynchronously: "ok" in the history means the process is stopped
    deadline = time.monotonic() + timeout
    while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
        time.sleep(0.005)


def _refuse_foreign(pids: tuple[int, ...], owned: dict[int, str], target: Target) -> None:
    foreign = [pid for pid in pids if pid not in owned]
    if foreign:
        raise UsageError(f"refused: pid {', '.join(map(str, foreign))} is not a process of the "
                         f"target {target.url} (its processes: "
                         f"{', '.join(f'{p} {r}' for p, r in sorted(owned.items()))}); nothing "
                         "was signalled")
