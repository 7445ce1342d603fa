"""Port picking and the start-up failure path of ServerProcess."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.errors import TargetError
from harness.launcher import ServerProcess, free_ports


def test_free_ports_are_distinct() -> None:
    ports = free_ports(16)
    assert len(set(ports)) == 16


def test_a_server_that_exits_before_ready_is_reaped_and_its_log_closed(tmp_path: Path) -> None:
    proc = ServerProcess([sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                         "http://127.0.0.1:9", tmp_path / "server.log")
    with pytest.raises(TargetError, match="exited with status 3 before it was ready"):
        proc.wait_ready(timeout=30)
    assert proc._log.closed
    assert "boom" in proc.log_tail()
