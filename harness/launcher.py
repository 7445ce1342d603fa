"""Start and stop server processes (reference workers, baselines) on loopback, by PID."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from .errors import TargetError

__all__ = ["ServerProcess", "free_port", "realtime_prefix", "start_worker", "stop_tree"]


# Ports the harness hands out (a router, a worker, a proxy, Locust's web UI) come from below the
# kernel's ephemeral range, so no outgoing connection and no `bind(("", 0))` elsewhere (the
# fleet's supervisor picks its workers' ports that way) can take one between the pick and the
# server's own bind; and each is reserved for a while in a file every harness process on this
# machine checks, so two runs or tests side by side never get the same one.
RESERVATIONS = Path(tempfile.gettempdir()) / f"llm-chaos-ports-{os.getuid()}"
RESERVE_FOR = 300.0  # seconds a port handed out is not handed out again


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, reserved against other harness processes."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that were free a moment ago, each reserved for RESERVE_FOR
    seconds against every other harness process (see RESERVATIONS)."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(10_000):
        port = rng.randrange(max(1024, low // 2), low)
        if port not in ports and _bindable(host, port) and _reserve(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise TargetError(f"no free TCP port on {host} below {low} after 10000 tries")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; the usual 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _reserve(port: int) -> bool:
    """Claim `port` for this process: False when another claimed it less than RESERVE_FOR ago."""
    RESERVATIONS.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = RESERVATIONS / str(port)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        pass
    try:
        if time.time() - path.stat().st_mtime < RESERVE_FOR:
            return False
        os.utime(path)  # an old claim: take it over
        return True
    except OSError:
        return False


def stop_tree(popen: subprocess.Popen[Any], timeout: float = 10.0,
              root_only: bool = False) -> int | None:
    """Stop a process we started and its children, by PID: SIGTERM (to the root only when
    `root_only`, which then stops its own children), wait up to `timeout`, SIGKILL the rest.
    Returns the root's exit status, or None if it could not be reaped."""
    with contextlib.suppress(psutil.NoSuchProcess):
        terminate_tree(psutil.Process(popen.pid), timeout, whole_tree=not root_only)
    try:
        return popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def terminate_tree(root: psutil.Process, grace: float, *, whole_tree: bool = False
                   ) -> list[psutil.Process]:
    """SIGTERM `root` (every process under it too with `whole_tree`), wait up to `grace` s,
    then SIGKILL what is left of the tree and anything it started meanwhile. Returns the
    processes still running after that (none, unless the kernel is stuck); raises
    psutil.NoSuchProcess if `root` is already gone."""
    tree = [root, *root.children(recursive=True)]
    for proc in tree if whole_tree else tree[:1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    deadline = time.monotonic() + grace
    while _running(tree) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = _running(tree)
    for proc in list(left):  # a child started while the root was stopping
        with contextlib.suppress(psutil.NoSuchProcess):
            left += [c for c in proc.children(recursive=True) if c not in left]
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    deadline = time.monotonic() + 5
    while _running(left) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _running(left)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of `procs` that still run. A zombie has ended (psutil's wait_procs would
    wait on one whose parent does not reap it, such as a tree left by a killed harness)."""
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


class ServerProcess:
    """A server we started: its process, its URL and its log; stopped with its children."""

    def __init__(self, cmd: Sequence[str], url: str, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.cmd = list(cmd)
        self.url = url
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 120.0, path: str = "/health") -> float:
        """Poll until `path` answers 200; return seconds since start. Raises TargetError."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    self.stop()  # its children, and our handle on its log
                    raise TargetError(f"{self.cmd[0]} exited with status {self.popen.returncode}"
                                      f" before it was ready:\n{self.log_tail()}")
                try:
                    if client.get(self.url + path).status_code == 200:
                        return time.monotonic() - self.started_at
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        self.stop()
        raise TargetError(f"server not ready after {timeout:.0f} s: {' '.join(self.cmd)}\n"
                          f"{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process and its children, SIGKILL what is left; return its status."""
        code = stop_tree(self.popen, timeout)
        self._log.close()
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def realtime_prefix() -> list[str]:
    """`chrt -f 10` where the kernel allows it (root or CAP_SYS_NICE), else nothing: the prefix
    that runs a process at real-time priority, for measurements whose timings the machine's
    other busy processes would otherwise decide. The kernel's RT throttling keeps such a
    process from starving the machine."""
    chrt = shutil.which("chrt")
    if chrt is None:
        return []
    probe = subprocess.run([chrt, "-f", "10", "true"], capture_output=True, check=False)
    return [chrt, "-f", "10"] if probe.returncode == 0 else []


def start_worker(model: str, *, port: int | None = None, host: str = "127.0.0.1",
                 args: Sequence[str] = (), log_dir: Path | None = None,
                 env: dict[str, str] | None = None, prefix: Sequence[str] = ()
                 ) -> ServerProcess:
    """Start `python -m targets.reference worker` as its own process (not yet ready), under
    `prefix` when given (e.g. `realtime_prefix()`)."""
    port = port or free_port(host)
    log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*prefix, sys.executable, "-m", "targets.reference", "worker", "--model", model,
           "--host", host, "--port", str(port), *args]
    return ServerProcess(cmd, f"http://{host}:{port}", log_dir / f"worker-{model}-{port}.log",
                         env=env)


def start_fleet(*args: str, log_path: Path, worker_logs: Path | None = None,
                admin_token: str | None = None, audit_log: Path | None = None,
                port: int | None = None, host: str = "127.0.0.1",
                env: dict[str, str] | None = None) -> ServerProcess:
    """Start `python -m targets.reference serve ARGS` (a router and its workers, one process
    group) with its own log at `log_path` and the workers' under `worker_logs` (default: a
    folder beside the log); not yet ready. The one place the target's command line is built."""
    port = port or free_port(host)
    worker_logs = worker_logs or log_path.parent / f"{log_path.stem}-workers"
    worker_logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "targets.reference", "serve", *args, "--host", host,
           "--port", str(port), "--log-dir", str(worker_logs)]
    if admin_token is not None:
        cmd.append(f"--admin-token={admin_token}")  # one argument: a token may start with "-"
    if audit_log is not None:
        cmd += ["--audit-log", str(audit_log)]
    return ServerProcess(cmd, f"http://{host}:{port}", log_path, env=env)
