"""The fault injector (Jepsen's nemesis): runs a schedule against a target, records every
inject and revert, and reverts everything in reverse order however the run ends: normally, on
an error, on Ctrl-C or on SIGTERM; a guard process covers a harness killed outright."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from ..errors import HarnessError
from ..target import Target
from .base import Effect, Fault, Ledger
from .guard import start_guard, stop_guard
from .heal import Heal
from .history import MemoryRecorder, Recorder
from .schedule import AbortCondition, Step
from .state import StateFile, default_state_dir

__all__ = ["FaultInjector", "RunResult", "Terminated", "exit_143_when_terminated",
           "sigterm_raises"]

PROCESS = "nemesis"


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread, so every `finally` (reverts, stops) runs;
    elsewhere (signals reach only the main thread) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so every `finally` runs (like Ctrl-C)."""


def exit_143_when_terminated(command: str, run: Callable[[], int]) -> int:
    """`run()`'s exit status, or 143 (128 + SIGTERM) when a SIGTERM ended it, once every
    `finally` below it has reverted its faults and stopped its processes."""
    try:
        return run()
    except Terminated:
        print(f"llm-chaos {command}: terminated (every fault reverted, every process stopped)",
              file=sys.stderr)
        return 143


@dataclass
class _Active:
    step: int
    inject_id: str
    fault: Fault
    effect: Effect
    revert_at: float


@dataclass
class RunResult:
    """How a run of the schedule went."""

    injected: int = 0
    reverted: int = 0
    failed: list[str] = field(default_factory=list)
    aborted: str | None = None
    interrupted: str | None = None


class FaultInjector:
    """Runs `steps` against `target` with a seeded RNG; `blast_radius` caps how many workers
    are affected at once; `abort` conditions stop the run early (everything reverted)."""

    def __init__(self, target: Target, steps: Sequence[Step], *, seed: int = 0,
                 recorder: Recorder | None = None, blast_radius: int | None = None,
                 abort: Sequence[AbortCondition] = (), guard: bool = True,
                 state_path: Path | None = None, state: StateFile | None = None,
                 grace: float = 2.0, poll: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.target = target
        self.steps = list(steps)
        self.seed = seed
        self.rng = random.Random(seed)
        self.recorder: Recorder = recorder if recorder is not None else MemoryRecorder()
        self.blast_radius = blast_radius
        self.abort = list(abort)
        self.use_guard = guard
        self.state_path = state_path or (default_state_dir()
                                         / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        self.grace = grace
        self.poll = poll
        self.clock = clock
        self.wall = wall
        self.active: list[_Active] = []
        self.result = RunResult()
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop() or a fault injected by hand: look again
        self._t0: float | None = None  # the running schedule's start on `clock`
        self._state: StateFile | None = None
        # a run's own state file (RunGuard): its guard watches it, and it outlives the schedule
        self._shared_state = state
        self._guard: subprocess.Popen[bytes] | None = None

    # -- public -------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check the schedule and every fault against the target before anything runs."""
        if self.blast_radius is not None and self.blast_radius < 1:
            from ..errors import UsageError

            raise UsageError(f"blast_radius must be at least 1, not {self.blast_radius}")
        for i, step in enumerate(self.steps):
            step.check(i)
            step.fault.validate(self.target)

    def plan(self, run_for: float) -> list[tuple[float, int]]:
        """(offset, step index) of every injection within `run_for` seconds, in order."""
        return sorted((t, i) for i, step in enumerate(self.steps) for t in step.starts(run_for))

    def dry_run(self, run_for: float) -> list[tuple[float, int]]:
        """Validate and record the plan as `info` lines without touching the target."""
        self.validate()
        plan = self.plan(run_for)
        for offset, i in plan:
            self._record("info", "inject", {"fault": self.steps[i].fault.name, "step": i,
                                            "at": offset, "for": self.steps[i].duration,
                                            "dry_run": True})
        return plan

    def stop(self) -> None:
        """Ask a running `run()` (in another thread) to end; it reverts everything."""
        self._stop.set()
        self._wake.set()

    @property
    def running(self) -> bool:
        """Whether `run()` is running its schedule (faults can be injected by hand)."""
        return self._t0 is not None and not self._stop.is_set()

    def inject_now(self, step: Step, by: str = "console") -> str:
        """Inject `step`'s fault now, beside the running schedule (a game day driven by hand):
        recorded like a scheduled one (with `by`), reverted after `step.duration`, by
        `revert_now`, or with everything else when the run ends. Returns the inject id;
        UsageError when the fault is refused, HarnessError when it failed or no run is on."""
        if not self.running or self._t0 is None:
            raise HarnessError("the fault schedule is not running: start the test first (or "
                               "it has ended)")
        now = self.clock() - self._t0
        step = Step(step.fault, at=now, duration=step.duration)  # once, from now
        step.check(len(self.steps))
        step.fault.validate(self.target)
        self.steps.append(step)
        item = self._inject(len(self.steps) - 1, now, now, {"by": by})
        if item is None:
            raise HarnessError(self.result.failed[-1])
        if not self.running:  # the run ended while this was injected: its revert_all missed it
            self.revert_now(item.inject_id, by)
            raise HarnessError(f"{step.fault.name}: the run ended meanwhile; reverted")
        self._wake.set()
        return item.inject_id

    def revert_now(self, inject_id: str, by: str = "console") -> bool:
        """Revert the active fault `inject_id` now (recorded with `by`); False when it is not
        active (already reverted)."""
        item = next((a for a in self.active if a.inject_id == inject_id), None)
        if item is None:
            return False
        self.active.remove(item)
        self._revert(item, {"by": by})
        return True

    def active_faults(self) -> list[dict[str, Any]]:
        """The active faults: inject id, fault, its workers, seconds left before its revert."""
        now = None if self._t0 is None else self.clock() - self._t0
        return [{"inject": a.inject_id, "fault": a.fault.name, "step": a.step,
                 "workers": sorted(a.effect.workers), "value": a.effect.value,
                 "left": None if now is None else max(0.0, a.revert_at - now)}
                for a in list(self.active)]

    def run(self, run_for: float) -> RunResult:
        """Run the schedule for `run_for` seconds, then revert what is left. Ctrl-C and
        SIGTERM revert too, then propagate (KeyboardInterrupt / Terminated)."""
        self.validate()
        with self._signals():
            try:
                self._open()
                self._t0 = self.clock()
                self._loop(run_for)
            except KeyboardInterrupt:
                self.result.interrupted = "SIGINT"
                raise
            except Terminated:
                self.result.interrupted = "SIGTERM"
                raise
            finally:
                self._t0 = None  # no more faults by hand: everything is reverted now
                with self._deferred_signals():
                    self.revert_all()
                    self._close()
        return self.result

    def revert_all(self) -> None:
        """Revert every active effect, newest first; each is tried even if one fails."""
        while self.active:
            self._revert(self.active.pop())

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, run_for: float) -> None:
        start = self._t0 if self._t0 is not None else self.clock()
        pending = self.plan(run_for)
        next_check = 0.0
        while not self._stop.is_set():
            now = self.clock() - start
            if now >= run_for:
                return
            if self.abort and now >= next_check:
                next_check = now + self.poll
                for condition in self.abort:
                    reason = condition.check(self.target)
                    if reason is not None:
                        self.result.aborted = reason
                        self._record("info", "abort", {"reason": reason})
                        return
            for item in sorted((a for a in self.active if a.revert_at <= now),
                               key=lambda a: -a.revert_at):
                if item in self.active:  # not reverted by hand meanwhile
                    self.active.remove(item)
                    self._revert(item)
            while pending and pending[0][0] <= now:
                offset, i = pending.pop(0)
                self._inject(i, offset, now)
            wake = [run_for, *(a.revert_at for a in self.active)]
            if pending:
                wake.append(pending[0][0])
            if self.abort:
                wake.append(next_check)
            self._wake.wait(max(0.0, min(wake) - (self.clock() - start)))
            self._wake.clear()

    def _inject(self, i: int, offset: float, now: float,
                extra: dict[str, Any] | None = None) -> _Active | None:
        step = self.steps[i]
        fault = step.fault
        inject_id = uuid.uuid4().hex[:12]
        busy = frozenset().union(*(a.effect.workers for a in self.active))
        budget = None if self.blast_radius is None else self.blast_radius - len(busy)
        ttl = step.duration + self.grace
        deadline = self.wall() + ttl
        ledger = Ledger(fault.name, ttl, worker_budget=budget, busy=busy,
                        on_note=lambda heal: self._note(heal, deadline))
        base = {"fault": fault.name, "step": i, "inject": inject_id, "at": offset,
                "for": step.duration, "ttl": ttl, **(extra or {})}
        self._record("invoke", "inject", base)
        try:
            effect = fault.inject(self.target, self.rng, ledger)
        except Exception as exc:
            partial = ledger.effect({"partial": True})
            self.result.failed.append(f"inject {fault.name}: {exc}")
            self._record("fail", "inject", {**base, "error": str(exc),
                                            "partial_heals": len(partial.heals)})
            if partial.heals:
                self._revert(_Active(i, inject_id, fault, partial, now))
            if not isinstance(exc, HarnessError):
                raise
            return None
        except BaseException:
            # interrupted mid-inject: keep what it did so far, so the final revert undoes it
            self.active.append(_Active(i, inject_id, fault, ledger.effect({"partial": True}),
                                       now))
            self._record("info", "inject", {**base, "interrupted": True})
            raise
        item = _Active(i, inject_id, fault, effect, now + step.duration)
        self.active.append(item)
        self.result.injected += 1
        self._record("ok", "inject", {**base, **effect.value,
                                      "workers": sorted(effect.workers)})
        return item

    def _revert(self, item: _Active, extra: dict[str, Any] | None = None) -> None:
        base = {"fault": item.fault.name, "step": item.step, "inject": item.inject_id,
                **(extra or {})}
        self._record("invoke", "revert", base)
        try:
            item.fault.revert(self.target, item.effect)
        except Exception as exc:  # recorded; the guard / TTL still heal it
            self.result.failed.append(f"revert {item.fault.name}: {exc}")
            self._record("fail", "revert", {**base, "error": str(exc)})
            return
        if self._state is not None:
            self._state.remove(list(item.effect.entry_ids))
        self.result.reverted += 1
        self._record("ok", "revert", base)

    def _note(self, heal: Heal, deadline: float) -> str:
        if self._state is None:
            return ""
        return self._state.add(heal, deadline).id

    def _record(self, type_: str, f: str, value: dict[str, Any]) -> None:
        self.recorder.write([{"type": type_, "f": f, "process": PROCESS, "time": self.wall(),
                              "value": value}])

    # -- guard and signals --------------------------------------------------------------------

    def _open(self) -> None:
        if self._shared_state is not None:
            self._state = self._shared_state
            return
        if not self.use_guard:
            return
        me = psutil.Process()
        self._state = StateFile(self.state_path, me.pid, me.create_time())
        self._guard = start_guard(self.state_path, me.pid)

    def _close(self) -> None:
        # only when everything was reverted may the guard go: else it heals what is left
        if self._state is self._shared_state:
            self._state = None  # the run's RunGuard heals what is left, at the run's end
            return
        if self._state is not None and not self.active:
            failed_reverts = any(line.startswith("revert ") for line in self.result.failed)
            if not failed_reverts:
                self._state.delete()
        if self._guard is not None:
            stop_guard(self._guard)
        self._guard = None
        self._state = None

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        with sigterm_raises():
            yield

    @contextlib.contextmanager
    def _deferred_signals(self) -> Iterator[None]:
        # a second Ctrl-C or SIGTERM must not cut the final revert short
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
