"""Issue 21: the HTTP front of router and workers bounds what a client may hold. Header blocks
past 64 KiB or 100 lines get 431; a half-sent head gets 408 and a stalled body loses its
connection after the request-read timeout; requests that take longer than that timeout to
*answer* (the server's time, not the client's) and pipelined requests are untouched. A client
that leaves before its answer is ready frees its worker at once, is recorded `cancelled` and
logged as one line; a generated admin token file is gone after a clean stop."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.launcher import ServerProcess, start_fleet, start_worker
from targets.reference.http_limits import MAX_HEADER_BYTES, MAX_HEADERS

READ_TIMEOUT = 1.0  # seconds; short so the test is quick: these limits are the client's time
TOKEN = "limits-test-token"


def _serve(tmp: Path, *extra: str) -> ServerProcess:
    return start_fleet("--model", "sim", "--workers", "1",
                       f"--request-read-timeout={READ_TIMEOUT}", "--worker-arg=--sim-ttft=0.01",
                       "--worker-arg=--sim-itl=0.01", *extra, log_path=tmp / "router.log",
                       worker_logs=tmp)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    logs = tmp_path_factory.mktemp("limits-router")
    audit = logs / "audit.jsonl"
    with _serve(logs, f"--admin-token={TOKEN}", "--audit-log", str(audit)) as proc:
        proc.wait_ready(timeout=60)
        yield proc, audit


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--sim-ttft=0.01", "--sim-itl=0.01", f"--request-read-timeout={READ_TIMEOUT}"]
    with start_worker("sim", args=args,
                      log_dir=tmp_path_factory.mktemp("limits-worker")) as proc:
        proc.wait_ready(timeout=60)
        yield proc


@pytest.fixture(params=["router", "worker"])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    if request.param == "router":
        proc: ServerProcess = request.getfixturevalue("router")[0]
        return proc
    return request.getfixturevalue("worker")  # type: ignore[no-any-return]


def _connect(server: ServerProcess) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _read_all(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


def _chat(max_tokens: int = 2, stream: bool = False) -> bytes:
    return json.dumps({"model": "sim", "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()


def _request(body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers or [])
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n{head}\r\n").encode() + body


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def test_header_blocks_past_the_limits_get_431(server: ServerProcess) -> None:
    cases = {
        "one large header": [("X-Big", "a" * (MAX_HEADER_BYTES + 1))],
        "many small headers": [(f"X-H{i}", "1") for i in range(2000)],
        "one header line too many": [(f"X-H{i}", "1") for i in range(MAX_HEADERS)],
    }
    for name, headers in cases.items():
        with _connect(server) as sock:
            sock.sendall(_request(_chat(), headers))
            response, _ = _read_all(sock)
        assert _status(response) == 431, (name, response[:200])
    # within the limits, served: 90 extra lines beside httpx's 7, 60 KiB in one header
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for headers in ([(f"X-H{i}", "1") for i in range(MAX_HEADERS - 10)],
                        [("X-Big", "a" * (MAX_HEADER_BYTES - 4096))]):
            answer = client.post("/v1/chat/completions", content=_chat(),
                                 headers=dict(headers, **{"content-type": "application/json"}))
            assert answer.status_code == 200, answer.text[:200]


def test_a_half_sent_head_gets_408_after_the_read_timeout(server: ServerProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        response, waited = _read_all(sock)
    assert _status(response) == 408, response[:200]
    assert READ_TIMEOUT * 0.9 <= waited < READ_TIMEOUT + 5, waited
    # slowloris: a byte at a time, each within the timeout, still ends at the timeout
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        status = 0
        try:
            while time.monotonic() - started < READ_TIMEOUT + 5:
                sock.sendall(b"X")
                time.sleep(READ_TIMEOUT / 4)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response, _ = _read_all(sock, limit=2)
        status = _status(response)
    assert status == 408 or response == b"", response[:200]
    assert time.monotonic() - started < READ_TIMEOUT + 5


def test_a_stalled_body_loses_its_connection_and_an_idle_one_is_closed(
        server: ServerProcess) -> None:
    body = _chat()
    with _connect(server) as sock:
        sock.sendall(_request(body)[:-5])  # head whole, body short by 5 bytes
        response, waited = _read_all(sock)
    assert b"200 OK" not in response
    assert READ_TIMEOUT * 0.9 <= waited < READ_TIMEOUT + 5, waited
    with _connect(server) as sock:  # opened and never used
        response, waited = _read_all(sock)
    assert response == b"" and waited < READ_TIMEOUT + 5, (response, waited)
    with httpx.Client(base_url=server.url, timeout=30) as client:  # still serving
        assert client.post("/v1/chat/completions", content=body,
                           headers={"content-type": "application/json"}).status_code == 200


def test_slow_answers_and_pipelined_requests_are_not_cut(server: ServerProcess) -> None:
    slow = _chat(max_tokens=int(3 * READ_TIMEOUT / 0.01))  # ~3 read timeouts to generate
    with _connect(server) as sock:
        # two requests in one write: the second waits, unread, behind the first
        sock.sendall(_request(slow) + _request(_chat()))
        sock.settimeout(30)
        data = b""
        started = time.monotonic()
        while data.count(b"HTTP/1.1 200") < 2 or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {time.monotonic() - started:.1f} s: " \
                          f"{data[:300]!r}"
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2, data[:300]
    assert time.monotonic() - started > 2 * READ_TIMEOUT  # the first answer did take long


def test_a_client_that_leaves_frees_its_worker_and_is_recorded_once(
        router: tuple[ServerProcess, Path]) -> None:
    proc, audit = router
    request_id = f"leaves-{time.monotonic_ns()}"
    ten_seconds = _chat(max_tokens=1000)  # at 10 ms a token: the client leaves long before
    with _connect(proc) as sock:
        sock.sendall(_request(ten_seconds, [("X-Request-Id", request_id)]))
        time.sleep(0.5)
    left = time.monotonic()
    final: dict[str, Any] = {}
    while time.monotonic() - left < 5 and not final:
        for line in audit.read_text().splitlines():
            record = json.loads(line)
            if record.get("request_id") == request_id and record["type"] != "accepted":
                final = record
        time.sleep(0.1)
    assert final, "no final audit record 5 s after the client left"
    assert final["type"] == "cancelled" and final["error"] == "client disconnected", final
    assert float(final["duration"]) < 5, final  # not the 10 s the answer would have taken
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        workers = client.get("/admin/workers", headers={"Authorization": f"Bearer {TOKEN}"})
        assert all(w["ongoing"] == 0 for w in workers.json()["workers"]), workers.text
    log = proc.log_path.read_text()
    lines = [line for line in log.splitlines() if request_id in line]
    assert len(lines) == 1 and "client left" in lines[0], lines
    assert "Traceback" not in log, log[-2000:]


def test_a_generated_admin_token_file_is_removed_on_a_clean_stop(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    proc = _serve(tmp_path, "--admin-token-file", str(token_file))
    try:
        proc.wait_ready(timeout=60)
        token = token_file.read_text().strip()
        assert len(token) >= 20 and token_file.stat().st_mode & 0o077 == 0
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=30) == 0
        assert not token_file.exists()
    finally:
        proc.stop()
