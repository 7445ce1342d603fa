"""Fixtures for the fault tests: reference fleets (real processes on loopback ports chosen at
run time, stopped by PID), a stand-in Toxiproxy API, and helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from harness.launcher import ServerProcess, free_port, free_ports
from harness.launcher import start_fleet as launch_fleet
from harness.target import Target
from tests.http_stub import JsonHandler
from tests.waiting import wait_for

TOKEN = "faults-test-token"

FleetFactory = Callable[..., tuple[ServerProcess, Target]]


def _fleets(tmp_path: Path) -> Iterator[FleetFactory]:
    started: list[tuple[ServerProcess, Target]] = []

    def factory(*args: str, workers: int = 2) -> tuple[ServerProcess, Target]:
        port = free_port()
        proc = launch_fleet("--model", "sim", "--workers", str(workers), *args,
                           log_path=tmp_path / f"fleet-{port}.log", admin_token=TOKEN,
                           port=port)
        target = Target(proc.url, TOKEN)
        started.append((proc, target))
        proc.wait_ready(timeout=60)
        # /health is 200 once one worker per model is live; faults want every worker live
        wait_for(lambda: all(w.state == "live" for w in target.workers()), 30,
                 "every worker to be live")
        return proc, target

    yield factory
    for proc, target in started:
        target.close()
        _resume_tree(proc.pid)
        proc.stop()


def _resume_tree(pid: int) -> None:
    # a failed test may leave a paused process: SIGCONT first so SIGTERM can act
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.resume()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def start_fleet(tmp_path: Path) -> Iterator[FleetFactory]:
    """Start `serve --model sim` fleets; each is stopped (router and workers) at teardown."""
    yield from _fleets(tmp_path)


@pytest.fixture
def fleet(start_fleet: FleetFactory) -> tuple[ServerProcess, Target]:
    """One fleet of two sim workers."""
    return start_fleet()


@pytest.fixture(scope="module")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[ServerProcess, Target]]:
    """One fleet of two sim workers for a whole module (its tests leave no fault behind)."""
    for factory in _fleets(tmp_path_factory.mktemp("fleet")):
        yield factory()


def status(pid: int) -> str:
    """psutil status of a process, or `gone`."""
    try:
        proc = psutil.Process(pid)
        return "gone" if proc.status() == psutil.STATUS_ZOMBIE else proc.status()
    except psutil.NoSuchProcess:
        return "gone"


class ToxiproxyStub:
    """The toxics part of Toxiproxy's HTTP API, in memory (a stand-in until the chaos proxy
    is there): GET/POST /proxies/{name}, GET/POST /proxies/{name}/toxics,
    DELETE /proxies/{name}/toxics/{toxic}, POST /reset."""

    def __init__(self, proxies: tuple[str, ...] = ("llm",)) -> None:
        self.proxies: dict[str, dict[str, Any]] = {
            name: {"name": name, "enabled": True, "toxics": {}} for name in proxies}
        self.lock = threading.Lock()
        stub = self

        class Handler(JsonHandler):
            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                with stub.lock:
                    proxy = stub.proxies.get(parts[1]) if len(parts) >= 2 else None
                    if proxy is None:
                        self.send_json(404, {"error": "proxy not found"})
                    elif len(parts) == 2:
                        self.send_json(200, {**proxy, "toxics": list(proxy["toxics"].values())})
                    else:
                        self.send_json(200, list(proxy["toxics"].values()))

            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                body = self._body()
                with stub.lock:
                    if parts == ["reset"]:
                        for each in stub.proxies.values():
                            each["toxics"].clear()
                            each["enabled"] = True
                        self.send_json(204)
                        return
                    found = stub.proxies.get(parts[1]) if len(parts) >= 2 else None
                    if found is None:
                        self.send_json(404, {"error": "proxy not found"})
                        return
                    proxy = found
                    if len(parts) == 2:
                        proxy["enabled"] = bool(body.get("enabled", proxy["enabled"]))
                        self.send_json(200, {**proxy, "toxics": list(proxy["toxics"].values())})
                    elif body["name"] in proxy["toxics"]:
                        self.send_json(409, {"error": "toxic already exists"})
                    else:
                        proxy["toxics"][body["name"]] = body
                        self.send_json(200, body)

            def do_DELETE(self) -> None:
                parts = self.path.strip("/").split("/")
                with stub.lock:
                    proxy = stub.proxies.get(parts[1]) if len(parts) >= 4 else None
                    if proxy is None or parts[3] not in proxy["toxics"]:
                        self.send_json(404, {"error": "toxic not found"})
                    else:
                        del proxy["toxics"][parts[3]]
                        self.send_json(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def toxics(self, proxy: str = "llm") -> list[dict[str, Any]]:
        with self.lock:
            return list(self.proxies[proxy]["toxics"].values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def toxiproxy() -> Iterator[ToxiproxyStub]:
    """An in-memory stand-in of Toxiproxy's API (no traffic)."""
    stub = ToxiproxyStub()
    yield stub
    stub.close()


class ChaosProxy:
    """`llm-chaos proxy` as a process: proxy `llm` on `listen` forwarding to `upstream`."""

    def __init__(self, upstream: str, log: Path) -> None:
        port, api = free_ports(2)
        self.listen = f"127.0.0.1:{port}"
        self.url = f"http://127.0.0.1:{api}"
        cmd = [sys.executable, "-m", "harness.cli", "proxy", "--listen", self.listen,
               "--upstream", upstream, "--name", "llm", "--api", f"127.0.0.1:{api}"]
        self.process = ServerProcess(cmd, self.url, log)
        self.process.wait_ready(timeout=30, path="/proxies")

    def toxics(self, proxy: str = "llm") -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/proxies/{proxy}/toxics", timeout=5)
        return list(resp.json())

    def close(self) -> None:
        self.process.stop()


@pytest.fixture
def chaos_proxy(tmp_path: Path) -> Iterator[Callable[[str], ChaosProxy]]:
    """Start the project's chaos proxy (Toxiproxy-compatible API); stopped by PID."""
    started: list[ChaosProxy] = []

    def factory(upstream: str = "127.0.0.1:9") -> ChaosProxy:
        proxy = ChaosProxy(upstream, tmp_path / f"proxy-{len(started)}.log")
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.close()


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not part of any target (a `sleep`), killed at teardown."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()
