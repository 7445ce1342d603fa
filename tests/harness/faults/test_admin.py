"""In-target faults through the admin API: each kind's effect on a real fleet, and its revert."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx
import psutil
import pytest

from harness.errors import UsageError
from harness.faults import AdminFault
from harness.faults.base import Effect, Ledger
from harness.launcher import ServerProcess
from harness.target import Target
from tests.waiting import wait_for


def _stream(target: Target, tokens: int = 12, timeout: float = 10.0) -> dict[str, Any]:
    """Stream one chat; the time it took, content chunks, error frames, [DONE], status."""
    body = {"model": "sim", "max_tokens": tokens, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "hi"}]}
    out: dict[str, Any] = {"chunks": 0, "errors": 0, "done": False, "status": 0}
    start = time.monotonic()
    with httpx.stream("POST", target.url + "/v1/chat/completions", json=body,
                      timeout=timeout) as resp:
        out["status"] = resp.status_code
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                out["errors"] += 1
            elif any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                out["chunks"] += 1
    out["elapsed"] = time.monotonic() - start
    return out


def _inject(target: Target, fault: AdminFault, ttl: float = 30) -> Effect:
    fault.validate(target)
    effect = fault.inject(target, random.Random(0), Ledger(fault.name, ttl))
    assert len(target.faults()) == len(effect.heals) >= 1
    return effect


def _revert(target: Target, fault: AdminFault, effect: Effect) -> None:
    fault.revert(target, effect)
    assert target.faults() == []
    fault.revert(target, effect)  # idempotent: already gone is fine


def test_latency(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("latency", params={"latency_s": 0.8})
    effect = _inject(target, fault)
    assert _stream(target)["elapsed"] >= 0.8
    _revert(target, fault, effect)
    assert _stream(target)["elapsed"] < 0.8


def test_slow_tokens(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("slow_tokens", params={"delay_s": 0.1})
    effect = _inject(target, fault)
    slow = _stream(target, tokens=10)
    assert slow["elapsed"] >= 0.8 and slow["done"]
    _revert(target, fault, effect)
    assert _stream(target, tokens=10)["elapsed"] < 0.8


def test_error_rate(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("error_rate", params={"probability": 1.0, "status": 503})
    effect = _inject(target, fault)
    assert _stream(target)["status"] == 503
    _revert(target, fault, effect)
    assert _stream(target)["status"] == 200


def test_hang(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("hang")
    effect = _inject(target, fault)
    with pytest.raises(httpx.ReadTimeout):
        _stream(target, timeout=1.0)
    _revert(target, fault, effect)
    assert _stream(target)["done"]


def test_truncate(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("truncate", params={"after_tokens": 3, "error_frame": True})
    effect = _inject(target, fault)
    cut = _stream(target, tokens=12)
    assert cut["errors"] == 1 and cut["chunks"] <= 4
    _revert(target, fault, effect)
    whole = _stream(target, tokens=12)
    assert whole["errors"] == 0 and whole["chunks"] >= 10


def test_memory_leak_on_a_worker(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("memory_leak", on="worker", params={"mb_per_s": 200, "cap_mb": 100})
    before = {w.id: psutil.Process(w.pid).memory_info().rss for w in target.workers()}
    effect = _inject(target, fault)
    (victim,) = effect.workers
    pid = next(w.pid for w in target.workers() if w.id == victim)
    wait_for(lambda: psutil.Process(pid).memory_info().rss > before[victim] + 80 * 2**20, 10,
             "the worker's RSS to grow by 80 MiB")
    _revert(target, fault, effect)
    held = [f for f in target.faults() if f["kind"] == "memory_leak"]
    assert held == []


def test_cpu_burn_on_a_worker(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("cpu_burn", on="worker", params={"threads": 1})
    effect = _inject(target, fault)
    (victim,) = effect.workers
    proc = psutil.Process(next(w.pid for w in target.workers() if w.id == victim))

    def busy() -> float:
        t0 = sum(proc.cpu_times()[:2])
        time.sleep(0.5)
        return (sum(proc.cpu_times()[:2]) - t0) / 0.5

    assert busy() > 0.3  # a busy thread, on a shared 2-core machine
    _revert(target, fault, effect)
    time.sleep(0.2)
    assert busy() < 0.2


def test_ttl_expires_at_the_target(shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    fault = AdminFault("latency", params={"latency_s": 0.2})
    _inject(target, fault, ttl=0.5)
    waited = wait_for(lambda: target.faults() == [], 3, "the fault to expire by itself")
    assert waited >= 0.3  # it lived until near its TTL, then went by itself


def test_bad_configuration_is_refused_before_the_run(
        shared_fleet: tuple[ServerProcess, Target]) -> None:
    _, target = shared_fleet
    with pytest.raises(UsageError, match="unknown latency"):
        AdminFault("latency", params={"latency": 1}).validate(target)
    with pytest.raises(UsageError, match="no worker nope"):
        AdminFault("hang", on="worker", workers=("nope",)).validate(target)
    with Target(target.url, "wrong") as wrong, \
            pytest.raises(UsageError, match="refused the admin token"):
        AdminFault("hang").validate(wrong)
