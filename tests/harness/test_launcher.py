"""Port picking and the start-up failure path of ServerProcess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import launcher
from harness.errors import TargetError
from harness.launcher import ServerProcess, free_ports


def test_free_ports_are_distinct() -> None:
    ports = free_ports(16)
    assert len(set(ports)) == 16


def test_ports_come_from_below_the_ephemeral_range_and_are_reserved_across_processes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No outgoing connection or `bind(0)` (the fleet's supervisor) can take a port between
    the pick and the server's bind, and another process picking at the same time (tests side
    by side, two runs) never gets the same one: seen as a router bound to another fleet's
    port when the suite ran two tests at a time."""
    monkeypatch.setattr(launcher, "RESERVATIONS", tmp_path / "ports")
    low = launcher._ephemeral_low()
    mine = free_ports(32)
    assert all(low // 2 <= port < low for port in mine)
    assert sorted(int(p.name) for p in (tmp_path / "ports").iterdir()) == sorted(mine)
    # another process whose random picks are our ports first (free: nothing listens on
    # them) gets none of them, only others
    code = ("import itertools, random; from pathlib import Path; from harness import launcher\n"
            f"launcher.RESERVATIONS = Path({str(tmp_path / 'ports')!r})\n"
            f"picks = itertools.chain({mine!r}, iter(lambda: random.randrange(16384, 32768), 0))\n"
            "class Picks:\n    def randrange(self, a, b): return next(picks)\n"
            "launcher.random.SystemRandom = Picks\n"
            "print(*launcher.free_ports(8))")
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert len(theirs) == 8 and not set(map(int, theirs)) & set(mine), theirs
    # a claim older than RESERVE_FOR is taken over; a fresh one is not
    port = mine[0]
    assert not launcher._reserve(port)
    old = time.time() - launcher.RESERVE_FOR - 1
    os.utime(tmp_path / "ports" / str(port), (old, old))
    assert launcher._reserve(port)


def test_a_server_that_exits_before_ready_is_reaped_and_its_log_closed(tmp_path: Path) -> None:
    proc = ServerProcess([sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                         "http://127.0.0.1:9", tmp_path / "server.log")
    with pytest.raises(TargetError, match="exited with status 3 before it was ready"):
        proc.wait_ready(timeout=30)
    assert proc._log.closed
    assert "boom" in proc.log_tail()
