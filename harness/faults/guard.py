"""The guard: a small process that heals the faults of a run if the run itself dies.

`python -m harness.faults guard --state FILE --owner PID --owner-create-time T` watches the
harness process (a pidfd on Linux, so even a SIGKILL is seen at once) and the state file. It
applies a heal when its deadline (the fault's TTL) passes, and all of them, in reverse order,
when the owner dies or the guard is asked to stop; then it deletes the state file and exits.
It only reads the state file while the owner lives.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psutil

from ..errors import HarnessError, TargetError
from .base import revert_heals
from .state import Entry, read_state

__all__ = ["heal_state_file", "main", "start_guard"]

POLL_S = 0.2


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return (abs(proc.create_time() - create_time) <= 0.01
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def heal_state_file(path: Path) -> tuple[list[str], list[str]]:
    """Apply every heal of a state file in reverse order, then delete it: (done, errors).

    A missing file means there is nothing to heal; running this twice is safe."""
    if not path.exists():
        return [], []
    _, entries = read_state(path)
    report = revert_heals([e.heal for e in entries])
    if not report.errors:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    return report.done, report.errors


def _log(log: Path | None, line: str) -> None:
    if log is None:
        return
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the guard until its owner dies or it is told to stop (SIGTERM / SIGINT)."""
    parser = argparse.ArgumentParser(prog="python -m harness.faults guard")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--owner-create-time", type=float, required=True)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch: select.poll | None = None
    try:
        pidfd = os.pidfd_open(args.owner)
        watch = select.poll()
        watch.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        watch = None  # no pidfd (not Linux, or already gone): poll the PID instead
    print("ready", flush=True)
    applied: set[str] = set()
    while not stop:
        owner_alive = _alive(args.owner, args.owner_create_time)
        if not owner_alive:
            _log(args.log, f"owner {args.owner} died: healing")
            break
        if not args.state.exists():
            _log(args.log, "state file gone: the run ended cleanly")
            return 0
        try:
            _, entries = read_state(args.state)
        except HarnessError as exc:
            _log(args.log, f"unreadable state: {exc}")
            entries = []
        _expire(entries, applied, args.log)
        if watch is not None:
            watch.poll(int(POLL_S * 1000))
        else:
            time.sleep(POLL_S)
    done, errors = ([], []) if not args.state.exists() else _heal_all(args.state)
    for line in done:
        _log(args.log, line)
    for line in errors:
        _log(args.log, f"error: {line}")
    return 1 if errors else 0


def _expire(entries: list[Entry], applied: set[str], log: Path | None) -> None:
    now = time.time()
    for entry in entries:
        if entry.deadline <= now and entry.id not in applied:
            applied.add(entry.id)
            report = revert_heals([entry.heal])
            _log(log, f"TTL passed: {'; '.join(report.done + report.errors)}")


def _heal_all(path: Path) -> tuple[list[str], list[str]]:
    try:
        return heal_state_file(path)
    except HarnessError as exc:
        return [], [str(exc)]


def start_guard(state: Path, owner: int | None = None, timeout: float = 10.0
                ) -> subprocess.Popen[bytes]:
    """Start a guard for `owner` (default: this process) and wait until it watches."""
    owner = os.getpid() if owner is None else owner
    create_time = psutil.Process(owner).create_time()
    cmd = [sys.executable, "-m", "harness.faults", "guard", "--state", str(state),
           "--owner", str(owner), "--owner-create-time", repr(create_time),
           "--log", str(state.with_suffix(".guard.log"))]
    # its own session: a Ctrl-C to the harness's process group must not reach the guard
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        raise TargetError(f"the fault guard did not start (exit status {proc.poll()})")
    return proc
