"""Planted bugs (test-only, `serve --planted-bug NAME`, hidden from --help): known defects the
harness's property-based search (`llm-chaos explore`) must find and shrink.

- `audit-loss-kill-while-paused`: when a worker dies of SIGKILL while another worker of the
  fleet is paused (SIGSTOP), or is paused at the same moment (within `GRACE`), the terminal
  audit records of the next `LOST_RECORDS` completed requests are silently dropped. Either
  fault alone loses nothing, nor does a kill some time before a pause.

The moment of death is seen by a thread polling each worker's pidfd (the exit is peeked at
with WNOWAIT, so the supervisor still reaps it), not at the supervisor's next look at its
workers: that look can come late on a busy machine, and whether a pause was still on by then
would make the bug a race. When the supervisor reaped the worker first (its look came before
this thread got to run: seen on a busy machine, where the search then found nothing), how it
died is read from the supervisor's `state` event instead, and the death dated by the pidfd.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import psutil

from .audit import AuditLog
from .registry import Registry

__all__ = ["PLANTED_BUGS", "plant"]

PLANTED_BUGS = ("audit-loss-kill-while-paused",)
LOST_RECORDS = 3
# a pause this soon after the kill counts as "while": faults the harness injects at the same
# moment land apart by the time each takes to inject (its calls to the router's admin API):
# about 30 ms on an idle 2-core machine, and more than the 0.1 s this once was on a busy one,
# where a search then missed the bug. It stays below the schedules' grid of 0.5 s, so a kill
# one step before a pause still does not count.
GRACE = 0.4


def _paused(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


def _killed(pid: int) -> bool | None:
    """Whether child `pid` died of SIGKILL (left unreaped); None when it was reaped already."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return (info is not None and info.si_code == os.CLD_KILLED
            and info.si_status == signal.SIGKILL)


def _exit_status(registry: Registry, pid: int) -> int | None:
    """The exit status the supervisor gave `pid` in its `state` event (dead), if it has."""
    try:
        events = list(registry.events.events)
    except RuntimeError:  # appended to while it was copied: next time
        return None
    for event in reversed(events):
        if event.get("type") == "state" and event.get("pid") == pid \
                and event.get("new") == "dead":
            status = event.get("status")
            return status if isinstance(status, int) else 0
    return None


def _watch(registry: Registry, audit: AuditLog) -> None:
    """Forever: when a worker dies of SIGKILL while another is paused (or is paused within
    `GRACE` seconds of that death), make the audit log drop the next records."""
    fds: dict[int, int] = {}  # pid -> pidfd
    seen: set[int] = set()
    killed: dict[int, float] = {}  # pid -> when its death was seen
    reaped: dict[int, float] = {}  # pid -> when it died, reaped before it could be looked at
    while True:
        try:
            workers = list(registry.workers.values())
        except RuntimeError:  # the registry changed while it was copied
            continue
        pids = {w.pid for w in workers if w.pid > 0}
        for pid in pids - fds.keys() - seen:
            try:
                fds[pid] = os.pidfd_open(pid)
            except OSError:
                seen.add(pid)
        poller = select.poll()
        for fd in fds.values():
            poller.register(fd, select.POLLIN)
        by_fd = {fd: pid for pid, fd in fds.items()}
        for fd, _ in poller.poll(10 if killed or reaped else 50):
            pid = by_fd[fd]
            os.close(fds.pop(pid))
            seen.add(pid)
            how = _killed(pid)
            if how is None:
                reaped[pid] = time.monotonic()
            elif how:
                killed[pid] = time.monotonic()
        for pid, since in list(reaped.items()):
            status = _exit_status(registry, pid)
            if status is not None or time.monotonic() - since > 2.0:
                del reaped[pid]
                if status == -signal.SIGKILL:
                    killed[pid] = since
        for pid, since in list(killed.items()):
            if any(_paused(w.pid) for w in workers if w.pid != pid):
                # from this thread: the loop may decrement it meanwhile and one update be
                # lost, which still loses records (the bug is what matters, not its count)
                audit.lose_completed += LOST_RECORDS
                del killed[pid]
            elif time.monotonic() - since > GRACE:
                del killed[pid]


def plant(name: str, registry: Registry, audit: AuditLog | None) -> None:
    """Wire the bug `name` into a fleet (a no-op without an audit log)."""
    if name not in PLANTED_BUGS:
        raise ValueError(f"--planted-bug must be one of {', '.join(PLANTED_BUGS)}")
    if audit is None:
        return
    threading.Thread(target=_watch, args=(registry, audit), name="planted-bug",
                     daemon=True).start()
