"""Acceptance: the harness killed mid-fault by SIGINT, SIGTERM or SIGKILL leaves nothing behind:
no target process stopped, no admin fault or toxic, no hog; and `faults clear` heals what a run
left when even its guard died, safely twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.launcher import ServerProcess
from harness.target import Target
from tests.waiting import wait_for

from .conftest import TOKEN, ChaosProxy, status

ROOT = Path(__file__).resolve().parents[3]


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


ProxyFactory = Callable[[str], ChaosProxy]


@pytest.fixture
def proxied(fleet: tuple[ServerProcess, Target],
            chaos_proxy: ProxyFactory) -> tuple[Target, ChaosProxy]:
    """The fleet's target, and the chaos proxy in front of it."""
    _, target = fleet
    return target, chaos_proxy(target.url.removeprefix("http://"))


def _start_run(target: Target, toxiproxy: ChaosProxy, run_dir: Path, hold: float = 60,
               check: bool = True) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the harness run and wait until its six faults are in force."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.harness.faults.nemesis_script",
                             target.url, TOKEN, toxiproxy.url, str(run_dir), str(hold)],
                            cwd=ROOT)
    try:
        wait_for(lambda: sum(h["type"] == "ok" and h["f"] == "inject"
                             for h in _history(run_dir)) == 6 or proc.poll() is not None,
                 30, "six faults injected")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    assert proc.poll() is None, _history(run_dir)
    oks = [h["value"] for h in _history(run_dir) if h["type"] == "ok" and h["f"] == "inject"]
    paused = oks[5]["victims"][0]["pid"]
    hogs = oks[2]["pids"] + oks[3]["pids"]
    guard = [p for p in psutil.Process(proc.pid).children() if "guard" in
             " ".join(p.cmdline())]
    if not check:
        return proc, {"paused": paused, "hogs": hogs, "guard": guard[0]}
    assert status(paused) == "stopped" and all(status(p) != "gone" for p in hogs)
    assert len(target.faults()) == 2 and len(toxiproxy.toxics()) == 1 and len(guard) == 1
    return proc, {"paused": paused, "hogs": hogs, "guard": guard[0]}


def _assert_healed(target: Target, toxiproxy: ChaosProxy, run_dir: Path,
                   what: dict[str, Any], timeout: float) -> None:
    wait_for(lambda: status(what["paused"]) not in ("stopped",), timeout, "SIGCONT")
    wait_for(lambda: all(status(p) == "gone" for p in what["hogs"]), timeout, "hogs gone")
    wait_for(lambda: target.faults() == [], timeout, "admin faults gone")
    wait_for(lambda: toxiproxy.toxics() == [], timeout, "toxics gone")
    wait_for(lambda: status(what["guard"].pid) == "gone", timeout, "the guard to exit")
    assert not (run_dir / "faults.json").exists()
    for pid in target.processes():
        # alive and not stopped (a process may be in disk sleep for a moment: that is alive)
        state = status(pid)
        assert state not in ("stopped", "tracing-stop", "gone"), (pid, state)
    wait_for(lambda: all(w.state == "live" for w in target.workers()), 10, "all workers live")


@pytest.mark.parametrize(("sig", "code"), [  # Ctrl-C solo: see test_chaos_plan's
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.solo), (signal.SIGTERM, 143)])
def test_interrupted_run_reverts_everything(proxied: tuple[Target, ChaosProxy],
                                            tmp_path: Path, sig: int, code: int) -> None:
    target, toxiproxy = proxied
    proc, what = _start_run(target, toxiproxy, tmp_path)
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=30) == code
    # reverted by the harness itself, before it exited
    assert status(what["paused"]) != "stopped"
    assert all(status(p) == "gone" for p in what["hogs"])
    assert target.faults() == [] and toxiproxy.toxics() == []
    history = _history(tmp_path)
    reverts = [h["value"]["step"] for h in history if h["type"] == "ok" and h["f"] == "revert"]
    assert reverts == [5, 4, 3, 2, 1, 0]  # reverse order
    _assert_healed(target, toxiproxy, tmp_path, what, timeout=10)


def test_sigkilled_run_is_healed_by_its_guard(proxied: tuple[Target, ChaosProxy],
                                              tmp_path: Path) -> None:
    target, toxiproxy = proxied
    proc, what = _start_run(target, toxiproxy, tmp_path)
    proc.kill()
    proc.wait()
    _assert_healed(target, toxiproxy, tmp_path, what, timeout=10)


def test_ttls_then_faults_clear_when_the_guard_died_too(proxied: tuple[Target, ChaosProxy],
                                                        tmp_path: Path) -> None:
    target, toxiproxy = proxied
    # faults held 3 s, TTL 5 s (3 + the injector's 2 s grace): both killed well before that
    proc, what = _start_run(target, toxiproxy, tmp_path, hold=3, check=False)
    what["guard"].kill()
    proc.kill()
    proc.wait()
    killed_at = time.monotonic()
    wait_for(lambda: status(what["guard"].pid) == "gone", 5, "the guard to die")
    # what lives elsewhere ends at its TTL by itself: admin faults, toxics, hogs
    wait_for(lambda: all(status(p) == "gone" for p in what["hogs"]), 8, "hogs gone at TTL")
    wait_for(lambda: toxiproxy.toxics() == [], 8, "toxic gone at TTL")
    wait_for(lambda: target.faults() == [], 12, "admin faults gone at TTL")
    assert time.monotonic() - killed_at < 12
    # a stopped process cannot enforce its own TTL: that takes the guard, or `faults clear`
    state = tmp_path / "faults.json"
    assert status(what["paused"]) == "stopped" and state.exists()
    clear = [sys.executable, "-m", "harness.cli", "faults", "clear", "--state", str(state),
             "--target", target.url, "--admin-token", TOKEN, "--proxy-api", toxiproxy.url]
    first = subprocess.run(clear, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"resumed pid {what['paused']}" in first.stdout
    _assert_healed(target, toxiproxy, tmp_path, what, timeout=5)
    second = subprocess.run(clear, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to heal" in second.stdout
