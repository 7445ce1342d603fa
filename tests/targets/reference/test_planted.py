"""The planted bug's window (test-only, `serve --planted-bug audit-loss-kill-while-paused`):
records are lost when a worker dies of SIGKILL while another is paused, or is paused within
GRACE of that death (faults struck at the same moment land apart by the time each takes to
inject); not for a kill alone, a pause alone, or a kill one schedule step (0.5 s) before a
pause. Real child processes, real signals; the registry and audit log are stand-ins."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from harness.strategies import _GRID
from targets.reference import planted
from targets.reference.planted import GRACE, LOST_RECORDS, plant


def _children(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            for _ in range(n)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    psutil.Process(proc.pid).suspend()
    while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
        time.sleep(0.005)


def _watched(procs: list[subprocess.Popen[bytes]]) -> tuple[Any, Any]:
    registry = SimpleNamespace(workers={f"w{i}": SimpleNamespace(pid=p.pid)
                                        for i, p in enumerate(procs)},
                               events=SimpleNamespace(events=collections.deque()))
    audit = SimpleNamespace(lose_completed=0)
    plant("audit-loss-kill-while-paused", registry, audit)  # type: ignore[arg-type]
    time.sleep(0.2)  # the watcher has opened each worker's pidfd
    return audit, registry


@pytest.mark.parametrize(("pause_after", "lost"), [
    (None, 0),                 # a kill alone
    (-0.2, LOST_RECORDS),      # killed while the other is paused
    (0.05, LOST_RECORDS),      # paused just after: struck at the same moment
    (GRACE * 0.6, LOST_RECORDS),
    (_GRID, 0),                # paused one schedule step after the kill
], ids=["kill-alone", "kill-while-paused", "same-moment", "same-moment-busy", "step-later"])
def test_records_are_lost_only_for_a_kill_within_a_pause(pause_after: float | None,
                                                           lost: int) -> None:
    assert GRACE < _GRID  # a kill one step before a pause is not "while"
    procs = _children(2)
    try:
        audit, _ = _watched(procs)
        killed, paused = procs
        if pause_after is not None and pause_after < 0:
            _stop(paused)
            time.sleep(-pause_after)
        killed.kill()
        if pause_after is not None and pause_after >= 0:
            time.sleep(pause_after)
            _stop(paused)
        time.sleep(GRACE + 0.3)  # past the window: the watcher has decided
        assert audit.lose_completed == lost
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_pause_alone_loses_nothing() -> None:
    procs = _children(2)
    try:
        audit, _ = _watched(procs)
        _stop(procs[1])
        time.sleep(GRACE + 0.3)
        assert audit.lose_completed == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_kill_the_supervisor_reaped_first_is_still_seen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a busy machine the supervisor may reap the dead worker before the watcher peeks at
    its exit (the watcher's peek finds nothing: forced here, the race is rare on an idle
    machine); how it died then comes from the supervisor's `state` event."""
    monkeypatch.setattr(planted, "_killed", lambda pid: None)
    procs = _children(2)
    try:
        audit, registry = _watched(procs)
        killed, paused = procs
        _stop(paused)
        killed.kill()
        killed.wait()  # reaped here, as the supervisor would
        time.sleep(0.3)  # its event comes a moment later
        registry.events.events.append({"type": "state", "pid": killed.pid, "new": "dead",
                                       "status": -signal.SIGKILL})
        time.sleep(GRACE + 0.3)
        assert audit.lose_completed == LOST_RECORDS
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
