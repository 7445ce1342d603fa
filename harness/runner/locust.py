"""Locust as a headless subprocess (importing locust patches the whole process with gevent,
so the harness never imports it): its output goes to a log, and the moment its users start
spawning is the start of the load, to which the fault schedule is relative."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..launcher import stop_tree

__all__ = ["LocustProcess"]

# Locust logs one of these when the test (and so the load) starts
_STARTED = re.compile(rb"Ramping to \d+ users|Shape test starting")


class LocustProcess:
    """`python -m locust ARGS` in its own session (environment `env`, default this one's),
    output to `log_path`."""

    def __init__(self, args: Sequence[str], log_path: Path, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.cmd = [sys.executable, "-m", "locust", *args]
        self.log_path = log_path
        self.started = threading.Event()
        self.started_at: float | None = None
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed by the reader thread
        self.popen = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
                                      env=dict(env) if env is not None else None)
        self.pid = self.popen.pid
        self._reader = threading.Thread(target=self._read, name="llm-chaos-locust-log",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout, self._log:
            for line in self.popen.stdout:
                if not self.started.is_set() and _STARTED.search(line):
                    self.started_at = time.monotonic()
                    self.started.set()
                self._log.write(line)
                self._log.flush()

    def wait_started(self, timeout: float) -> bool:
        """Wait until the load starts; False when Locust exited or `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.started.wait(0.1):
                return True
            if self.popen.poll() is not None:
                return self.started.is_set()
        return False

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait(self, timeout: float) -> int | None:
        """Wait for Locust to end by itself; its exit status, or None on timeout."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 20.0) -> int | None:
        """Ask Locust to quit (SIGTERM: it stops its users and writes their records), then
        SIGKILL what is left of its process tree; idempotent."""
        code = stop_tree(self.popen, timeout, root_only=True)
        self._reader.join(timeout=5)
        return code
