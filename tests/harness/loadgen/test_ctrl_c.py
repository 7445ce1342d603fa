"""Ctrl-C stops a Locust run with the harness's plugin even while a thread of ours runs: it
was swallowed by the observer thread (under gevent, a greenlet), and Locust ran on to its time
limit (test_chaos_plan's Ctrl-C variant failed that way, now and then)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LOCUSTFILE = Path(__file__).parent / "locustfiles" / "busy_thread.py"

# a signal: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo


@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_stops_locust_while_a_thread_of_ours_is_busy(tmp_path: Path,
                                                            attempt: int) -> None:
    log = tmp_path / "locust.log"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1",
           "-t", "120s", "--host", "http://127.0.0.1:9", "--run-dir", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while b"All users spawned" not in log.read_bytes():
                assert popen.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            time.sleep(0.5 + attempt * 0.37)  # somewhere in the busy thread's cycle
            popen.send_signal(signal.SIGINT)
            code = popen.wait(timeout=30)  # the -t limit is 120 s
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
    text = log.read_text()
    assert "Shutting down" in text, text
    assert "Exception in thread busy" not in text, text
    assert code == 0, text
