"""The guard enforces TTLs while the harness lives (a hung or stopped harness), and
`faults clear` refuses to heal under a live run unless forced."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.cli import build_parser
from harness.errors import UsageError
from harness.faults.guard import start_guard
from harness.faults.heal import ResumeProcess
from harness.faults.state import StateFile
from tests.waiting import wait_for

from .conftest import status

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def stopped() -> Iterator[subprocess.Popen[bytes]]:
    """A stopped `sleep` outside any target."""
    proc = subprocess.Popen(["sleep", "30"])
    psutil.Process(proc.pid).suspend()
    yield proc
    proc.kill()
    proc.wait()


def test_guard_applies_a_heal_at_its_deadline(tmp_path: Path,
                                              stopped: subprocess.Popen[bytes]) -> None:
    me = psutil.Process()
    state = StateFile(tmp_path / "state.json", me.pid, me.create_time())
    proc = psutil.Process(stopped.pid)
    deadline = time.time() + 2.0
    state.add(ResumeProcess(stopped.pid, proc.create_time()), deadline)
    guard = start_guard(state.path)
    try:
        # still stopped before its deadline (a busy machine may start the guard after it)
        assert status(stopped.pid) == "stopped" or time.time() >= deadline
        wait_for(lambda: status(stopped.pid) != "stopped", 10, "the guard to SIGCONT at TTL")
        assert time.time() >= deadline  # healed at its deadline, not before
        assert guard.poll() is None  # the owner lives: the guard keeps watching
    finally:
        state.delete()
        guard.terminate()
        assert guard.wait(10) == 0


def test_clear_refuses_a_live_run_unless_forced(tmp_path: Path,
                                                stopped: subprocess.Popen[bytes]) -> None:
    me = psutil.Process()
    state = StateFile(tmp_path / "state.json", os.getpid(), me.create_time())
    state.add(ResumeProcess(stopped.pid, psutil.Process(stopped.pid).create_time()), 1e12)
    args = build_parser().parse_args(["faults", "clear", "--state", str(state.path)])
    with pytest.raises(UsageError, match="still alive"):
        args.run(args)
    forced = subprocess.run([sys.executable, "-m", "harness.cli", "faults", "clear", "--state",
                             str(state.path), "--force"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert forced.returncode == 0, forced.stderr
    assert status(stopped.pid) != "stopped" and not state.path.exists()
