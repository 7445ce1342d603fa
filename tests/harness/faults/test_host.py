"""Host faults: CPU and memory hog processes, bounded, killed on revert, gone at their TTL."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

from harness.errors import UsageError
from harness.faults import CpuHog, MemoryHog
from harness.faults.base import Effect, Ledger
from harness.target import Target
from tests.waiting import wait_for

from .conftest import status

NOWHERE = Target("http://127.0.0.1:9")  # host faults do not talk to the target


@contextmanager
def _injected(fault: CpuHog | MemoryHog) -> Iterator[tuple[Effect, int]]:
    """Validate and inject a fault of one hog process; yield its effect and PID; revert it at
    the end, however the block ends."""
    fault.validate(NOWHERE)
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    try:
        (pid,) = effect.value["pids"]
        yield effect, pid
    finally:
        fault.revert(NOWHERE, effect)


def test_cpu_hog_burns_a_cpu_until_reverted() -> None:
    fault = CpuHog(processes=1)
    with _injected(fault) as (effect, pid):
        proc = psutil.Process(pid)
        t0 = sum(proc.cpu_times()[:2])
        time.sleep(0.6)
        assert sum(proc.cpu_times()[:2]) - t0 > 0.2
    assert status(pid) == "gone"
    fault.revert(NOWHERE, effect)  # idempotent


def test_memory_hog_holds_its_memory_until_reverted() -> None:
    with _injected(MemoryHog(mb=64)) as (_, pid):
        wait_for(lambda: psutil.Process(pid).memory_info().rss >= 64 * 2**20, 10,
                 "the hog to hold 64 MiB")
    assert status(pid) == "gone"


def test_hogs_end_by_themselves_at_their_ttl() -> None:
    faults: list[CpuHog | MemoryHog] = [CpuHog(), MemoryHog(mb=8)]
    effects = [f.inject(NOWHERE, random.Random(0), Ledger(f.name, 0.5)) for f in faults]
    pids = [e.value["pids"][0] for e in effects]
    # the hogs are our children: reap them as they exit, as the revert would
    waited = wait_for(lambda: all(_reaped(p) for p in pids), 10, "the hogs to exit at their TTL")
    assert waited >= 0.3  # they ran until near their TTL
    for fault, effect in zip(faults, effects, strict=True):
        fault.revert(NOWHERE, effect)


def _reaped(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            proc.wait(0)
            return True
        return False
    except psutil.NoSuchProcess:
        return True


def test_hogs_are_bounded() -> None:
    with pytest.raises(UsageError, match="more than half the memory"):
        MemoryHog(mb=10**9).validate(NOWHERE)
    with pytest.raises(UsageError, match="cpu hog processes"):
        CpuHog(processes=10**4).validate(NOWHERE)
