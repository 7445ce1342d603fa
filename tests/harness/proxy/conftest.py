"""Fixtures of the proxy tests: a proxy process, an echo server process, and a raw client."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.launcher import ServerProcess, free_port


class Proxy:
    """A running `llm-chaos proxy` and a client for its API."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.api = httpx.Client(base_url=proc.url, timeout=5)

    def create(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> str:
        """Create a proxy through the API; return the address it listens on."""
        resp = self.api.post("/proxies", json={"name": name, "listen": listen,
                                                 "upstream": upstream})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["listen"])

    def toxic(self, proxy: str, **body: object) -> dict[str, object]:
        resp = self.api.post(f"/proxies/{proxy}/toxics", json=body)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def remove(self, proxy: str, toxic: str) -> None:
        resp = self.api.delete(f"/proxies/{proxy}/toxics/{toxic}")
        assert resp.status_code == 204, resp.text


def start_proxy(logs: Path, *args: str) -> ServerProcess:
    port = free_port()
    proc = ServerProcess([sys.executable, "-m", "harness.cli", "proxy", "--api",
                          f"127.0.0.1:{port}", *args], f"http://127.0.0.1:{port}",
                         logs / f"proxy-{port}.log")
    proc.wait_ready(timeout=60, path="/version")
    return proc


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """One proxy process per test module; every test starts from /reset."""
    proc = start_proxy(tmp_path_factory.mktemp("proxy"), "--seed", "7")
    client = Proxy(proc)
    try:
        yield client
    finally:
        client.api.close()
        proc.stop()


@pytest.fixture
def fresh(proxy: Proxy) -> Iterator[Proxy]:
    """The module's proxy with no proxies left over from the previous test."""
    yield proxy
    for name in list(proxy.api.get("/proxies").json()):
        proxy.api.delete(f"/proxies/{name}")


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An echo server process; yields its host:port."""
    port = free_port()
    logs = tmp_path_factory.mktemp("echo")
    proc = ServerProcess([sys.executable, "-m", "tests.harness.proxy.echo", str(port)],
                         f"tcp://127.0.0.1:{port}", logs / "echo.log")
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or proc.popen.poll() is not None:
                    raise RuntimeError(f"echo server did not start: {proc.log_tail()}") from exc
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


def connect(address: str, timeout: float = 5.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            break
        data += piece
    return data


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
