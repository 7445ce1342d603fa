"""The guard: a small process that heals the faults of a run if the run itself dies.

`python -m harness.faults guard --state FILE --owner PID --owner-create-time T` watches the
harness process (a pidfd on Linux, so even a SIGKILL is seen at once) and the state file. It
applies a heal when its deadline (the fault's TTL) passes, and all of them, in reverse order,
when the owner dies or the guard is asked to stop; then it deletes the state file and exits.
It only reads the state file while the owner lives.

`RunGuard` opens a run's state file and guard before the run starts anything, and notes each
process the run starts (a target, Locust) as a `StopProcess` heal: a harness killed outright
(SIGKILL) leaves neither faults nor processes behind, and `llm-chaos faults clear` stops what a
run left when its guard died with it.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType

import psutil

from ..errors import HarnessError, TargetError
from .base import revert_heals
from .heal import StopProcess
from .state import Entry, StateFile, default_state_dir, read_state

__all__ = ["RunGuard", "heal_state_file", "main", "process_alive", "start_guard", "stop_guard"]

POLL_S = 0.2
NEVER = 1e12  # the deadline of a heal applied only when the run ends (Unix time, year 33658)


def process_alive(pid: int, create_time: float) -> bool:
    """Whether the process `pid` started at `create_time` still runs (a reused PID does not)."""
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
        owner_alive = process_alive(args.owner, args.owner_create_time)
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


def stop_guard(proc: subprocess.Popen[bytes]) -> None:
    """Ask a guard to end (it heals what its state file still lists, then exits) and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RunGuard:
    """A run's state file and guard process, held for the whole run (a context manager).

    `track(pid)` notes a process the run started; on a clean exit every heal still noted is
    applied (processes already stopped are "gone") and the file deleted. If the harness dies,
    the guard applies them: faults first (noted later), then the processes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_state_dir() / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.state: StateFile | None = None
        self._guard: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RunGuard:
        me = psutil.Process()
        self.state = StateFile(self.path, me.pid, me.create_time())
        try:
            self._guard = start_guard(self.path, me.pid)
        except BaseException:
            self.state.delete()
            raise
        return self

    def track(self, pid: int, grace: float = 3.0) -> str:
        """Note process `pid` (started by the run) to be stopped if the run dies; its entry id."""
        assert self.state is not None, "RunGuard.track outside its `with` block"
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return ""  # already gone: nothing to stop
        return self.state.add(StopProcess(pid, create_time, grace), NEVER).id

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            _, errors = _heal_all(self.path)
            for line in errors:
                print(f"llm-chaos: {line} (run `llm-chaos faults clear --state {self.path}`)",
                      file=sys.stderr)
        finally:
            if self._guard is not None:
                stop_guard(self._guard)
            self._guard = None
            self.state = None
