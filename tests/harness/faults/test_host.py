"""Host faults: CPU and memory hog processes, bounded, killed on revert, gone at their TTL."""

from __future__ import annotations

import random
import time

import psutil
import pytest

from harness.errors import UsageError
from harness.faults import CpuHog, MemoryHog
from harness.faults.base import Ledger
from harness.target import Target
from tests.waiting import wait_for

from .conftest import status

NOWHERE = Target("http://127.0.0.1:9")  # host faults do not talk to the target


def test_cpu_hog_burns_a_cpu_until_reverted() -> None:
    fault = CpuHog(processes=1)
    fault.validate(NOWHERE)
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    (pid,) = effect.value["pids"]
    try:
        proc = psutil.Process(pid)
        t0 = sum(proc.cpu_times()[:2])
        time.sleep(0.6)
        assert sum(proc.cpu_times()[:2]) - t0 > 0.2
    finally:
        fault.revert(NOWHERE, effect)
    assert status(pid) == "gone"
    fault.revert(NOWHERE, effect)  # idempotent


def test_memory_hog_holds_its_memory_until_reverted() -> None:
    fault = MemoryHog(mb=64)
    fault.validate(NOWHERE)
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    (pid,) = effect.value["pids"]
    try:
        wait_for(lambda: psutil.Process(pid).memory_info().rss >= 64 * 2**20, 10,
                 "the hog to hold 64 MiB")
    finally:
        fault.revert(NOWHERE, effect)
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
