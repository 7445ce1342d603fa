"""Abort conditions: a reason only once the unhealthy state has lasted its seconds in a row
(pure logic: a stand-in target and clock)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from harness.errors import TargetError
from harness.faults import NoLiveWorkers


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Target:
    def __init__(self) -> None:
        self.states: list[str] | None = ["live"]

    def workers(self) -> list[Any]:
        if self.states is None:
            raise TargetError("unreachable")
        return [SimpleNamespace(state=s) for s in self.states]


def test_no_live_workers_aborts_after_its_seconds_in_a_row() -> None:
    clock, target = _Clock(), _Target()
    abort = NoLiveWorkers(5.0, clock=clock)
    assert abort.check(target) is None  # type: ignore[arg-type]
    target.states = ["dead", "starting"]
    assert abort.check(target) is None  # type: ignore[arg-type]
    clock.now += 4.9
    assert abort.check(target) is None  # type: ignore[arg-type]
    target.states = ["live"]  # back for a moment: the count starts again
    assert abort.check(target) is None  # type: ignore[arg-type]
    target.states = None  # the target does not answer: no live worker seen
    clock.now += 1
    assert abort.check(target) is None  # type: ignore[arg-type]
    clock.now += 5
    assert abort.check(target) == "no live worker for 5 s"  # type: ignore[arg-type]
