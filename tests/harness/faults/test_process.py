"""Process faults on a real fleet: pause/resume, kill, terminate of workers and the router,
and the refusal of a PID outside the target."""

from __future__ import annotations

import random
import subprocess

import httpx
import pytest

from harness.errors import UsageError
from harness.faults import ProcessFault, Victims
from harness.faults.base import Ledger
from harness.launcher import ServerProcess
from harness.target import Target
from tests.waiting import wait_for

from .conftest import FleetFactory, status


def _state(target: Target, worker_id: str) -> str:
    return next(w.state for w in target.workers() if w.id == worker_id)


def _complete(target: Target) -> int:
    resp = httpx.post(target.url + "/v1/completions",
                      json={"model": "sim", "prompt": "x", "max_tokens": 2}, timeout=10)
    return resp.status_code


def test_pause_worker_and_resume(fleet: tuple[ServerProcess, Target]) -> None:
    _, target = fleet
    fault = ProcessFault("pause", Victims(count=1))
    fault.validate(target)
    effect = fault.inject(target, random.Random(1), Ledger(fault.name, 30))
    (victim,) = effect.value["victims"]
    try:
        assert status(victim["pid"]) == "stopped"
        wait_for(lambda: _state(target, victim["role"]) == "unlive", 10,
                 "the paused worker to be unlive")
        assert _complete(target) == 200  # the other worker serves
    finally:
        fault.revert(target, effect)
    assert status(victim["pid"]) != "stopped"
    wait_for(lambda: _state(target, victim["role"]) == "live", 10, "the worker live again")
    fault.revert(target, effect)  # idempotent
    assert effect.workers == {victim["role"]}


def test_kill_and_terminate_workers_are_restarted(fleet: tuple[ServerProcess, Target]) -> None:
    _, target = fleet
    for action in ("kill", "terminate"):
        fault = ProcessFault(action, Victims(count=2))
        before = {w.id: w.pid for w in target.workers()}
        effect = fault.inject(target, random.Random(2), Ledger(fault.name, 30))
        pids = [v["pid"] for v in effect.value["victims"]]
        assert sorted(pids) == sorted(before.values())
        wait_for(lambda pids=pids: all(status(p) == "gone" for p in pids), 10,  # type: ignore[misc]
                 f"{action}ed workers gone")
        wait_for(lambda pids=pids: all(w.state == "live" and w.pid not in pids  # type: ignore[misc]
                                       for w in target.workers()), 15, "replacements live")
        fault.revert(target, effect)  # nothing to undo
    assert _complete(target) == 200


def test_pause_router_then_resume(fleet: tuple[ServerProcess, Target]) -> None:
    proc, target = fleet
    fault = ProcessFault("pause", Victims(role="router"))
    effect = fault.inject(target, random.Random(0), Ledger(fault.name, 30))
    try:
        assert effect.value["victims"] == [{"pid": proc.pid, "role": "router"}]
        assert status(proc.pid) == "stopped"
        with pytest.raises(httpx.TimeoutException):
            httpx.get(target.url + "/health", timeout=0.5)
    finally:
        fault.revert(target, effect)
    assert httpx.get(target.url + "/health", timeout=5).status_code == 200


def test_kill_router_takes_the_target_down(start_fleet: FleetFactory) -> None:
    proc, target = start_fleet(workers=1)
    workers = [w.pid for w in target.workers()]
    fault = ProcessFault("kill", Victims(role="router"))
    fault.inject(target, random.Random(0), Ledger(fault.name, 30))
    wait_for(lambda: proc.popen.poll() is not None, 10, "the router to die")
    wait_for(lambda: all(status(p) == "gone" for p in workers), 10, "its workers to die")
    assert proc.popen.returncode is not None and workers


def test_pid_outside_the_target_is_refused(fleet: tuple[ServerProcess, Target],
                                           bystander: subprocess.Popen[bytes]) -> None:
    _, target = fleet
    before = {w.id: (w.pid, w.restarts) for w in target.workers()}
    for action in ("kill", "terminate", "pause"):
        worker_pid = next(iter(before.values()))[0]
        fault = ProcessFault(action, Victims(pids=(worker_pid, bystander.pid)))
        with pytest.raises(UsageError, match=rf"refused: pid {bystander.pid} is not a process "
                                             r"of the target.*nothing was signalled"):
            fault.validate(target)
        ledger = Ledger(fault.name, 30)
        with pytest.raises(UsageError, match="nothing was signalled"):
            fault.inject(target, random.Random(0), ledger)
        assert ledger.heals == []
    assert bystander.poll() is None and status(bystander.pid) != "stopped"
    # not even the target's own PID listed alongside it was signalled
    assert {w.id: (w.pid, w.restarts) for w in target.workers()} == before
    assert all(status(pid) not in ("stopped", "gone") for pid, _ in before.values())
