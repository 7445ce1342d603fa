"""Each toxic kind against real processes: its effect, then its removal."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from harness.launcher import ServerProcess

from ...conftest import sse_events
from .conftest import Proxy, connect, recv_exactly


def _rtt(sock: socket.socket, data: bytes) -> float:
    start = time.perf_counter()
    sock.sendall(data)
    assert recv_exactly(sock, len(data)) == data
    return time.perf_counter() - start


def test_latency_upstream_with_seeded_jitter(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("lat", echo)
    fresh.toxic("lat", type="latency", stream="upstream",
                attributes={"latency": 100, "jitter": 40})
    with connect(listen) as sock:
        rtts = [_rtt(sock, b"x" * 8) for _ in range(5)]
        assert all(0.058 <= r <= 0.2 for r in rtts), rtts
        assert max(rtts) - min(rtts) > 0.005  # jitter drawn per chunk
        fresh.remove("lat", "latency_upstream")
        assert _rtt(sock, b"y") < 0.04


def test_bandwidth(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("bw", echo)
    fresh.toxic("bw", type="bandwidth", attributes={"rate": 20})
    payload = bytes(range(256)) * 40  # 10,240 bytes at 20 KB/s: about 0.5 s
    with connect(listen) as sock:
        elapsed = _rtt(sock, payload)
        assert 0.45 <= elapsed <= 1.5, elapsed
        fresh.remove("bw", "bandwidth_downstream")
        assert _rtt(sock, payload) < 0.1


def test_slicer(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("sl", echo)
    fresh.toxic("sl", type="slicer",
                attributes={"average_size": 100, "size_variation": 40, "delay": 10000})
    payload = b"s" * 1000
    with connect(listen) as sock:
        start = time.perf_counter()
        sock.sendall(payload)
        pieces = []
        while sum(map(len, pieces)) < len(payload):
            pieces.append(sock.recv(65536))
        elapsed = time.perf_counter() - start
        assert b"".join(pieces) == payload
        assert len(pieces) >= 6 and all(len(p) <= 140 * 2 for p in pieces)
        assert elapsed >= 0.06
        fresh.remove("sl", "slicer_downstream")
        assert _rtt(sock, payload) < 0.04


def _close_after_shutdown(address: str) -> float:
    with connect(address) as sock:
        sock.sendall(b"bye")
        assert recv_exactly(sock, 3) == b"bye"
        start = time.perf_counter()
        sock.shutdown(socket.SHUT_WR)  # echo sees EOF and closes its side
        assert sock.recv(10) == b""
        return time.perf_counter() - start


def test_slow_close(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("sc", echo)
    fresh.toxic("sc", type="slow_close", attributes={"delay": 300})
    assert _close_after_shutdown(listen) >= 0.29
    fresh.remove("sc", "slow_close_downstream")
    assert _close_after_shutdown(listen) < 0.1


def test_timeout_black_hole_and_close(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("to", echo)
    fresh.toxic("to", type="timeout", stream="upstream", attributes={"timeout": 0})
    with connect(listen, timeout=0.3) as sock:
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        fresh.remove("to", "timeout_upstream")
        sock.settimeout(5)
        assert _rtt(sock, b"found") < 0.1  # flows again; what was dropped stays dropped
    fresh.toxic("to", type="timeout", attributes={"timeout": 200})
    with connect(listen) as sock:
        start = time.perf_counter()
        assert sock.recv(10) == b""
        assert 0.19 <= time.perf_counter() - start <= 1.0


def test_reset_peer(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("rp", echo)
    fresh.toxic("rp", type="reset_peer", attributes={"timeout": 100})
    with connect(listen) as sock:
        start = time.perf_counter()
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        assert time.perf_counter() - start >= 0.09
    fresh.remove("rp", "reset_peer_downstream")
    with connect(listen) as sock:
        assert _rtt(sock, b"fine") < 0.1


def test_limit_data(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("ld", echo)
    fresh.toxic("ld", type="limit_data", attributes={"bytes": 10})
    with connect(listen) as sock:
        sock.sendall(b"0123456789abcdefghij")
        assert recv_exactly(sock, 20) == b"0123456789"
    fresh.remove("ld", "limit_data_downstream")
    with connect(listen) as sock:
        assert _rtt(sock, b"0123456789abcdefghij") < 0.1


def test_toxicity_is_per_connection(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("tx", echo)
    fresh.toxic("tx", type="latency", toxicity=0.5, attributes={"latency": 60})
    slow = 0
    for _ in range(16):
        with connect(listen) as sock:
            slow += _rtt(sock, b"t") >= 0.055
    assert 2 <= slow <= 14, slow


def _chat(url: str, max_tokens: int = 6) -> httpx.Response:
    body = {"model": "sim", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(timeout=10) as client:
        resp = client.post(url + "/v1/chat/completions", json=body)
        resp.read()
        return resp


def test_sse_stall(fresh: Proxy, sim_worker: ServerProcess) -> None:
    url = "http://" + fresh.create("stall", sim_worker.url.removeprefix("http://"))
    fresh.toxic("stall", type="sse_stall", attributes={"events": 3})
    with httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as client, pytest.raises(
            httpx.ReadTimeout):
        body = {"model": "sim", "max_tokens": 6, "stream": True,
                "messages": [{"role": "user", "content": "hello"}]}
        with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            got = []
            for line in resp.iter_lines():
                if line:
                    got.append(line)
    assert len(got) == 3
    fresh.toxic("stall", type="sse_stall", name="timed", attributes={"events": 2}, ttl=0.4)
    fresh.remove("stall", "sse_stall_downstream")
    start = time.perf_counter()
    events = sse_events(_chat(url))  # held after 2 events until the TTL removes the toxic
    assert time.perf_counter() - start >= 0.35
    assert events[-1] == "[DONE]" and len(events) == 9  # role, 6 tokens, finish, DONE


def test_sse_cut(fresh: Proxy, sim_worker: ServerProcess) -> None:
    url = "http://" + fresh.create("cut", sim_worker.url.removeprefix("http://"))
    fresh.toxic("cut", type="sse_cut", attributes={"events": 2})
    with pytest.raises(httpx.RemoteProtocolError):
        _chat(url)
    fresh.remove("cut", "sse_cut_downstream")
    assert sse_events(_chat(url))[-1] == "[DONE]"


def test_sse_drop_done(fresh: Proxy, sim_worker: ServerProcess) -> None:
    url = "http://" + fresh.create("dd", sim_worker.url.removeprefix("http://"))
    fresh.toxic("dd", type="sse_drop_done")
    events = sse_events(_chat(url))
    assert "[DONE]" not in events
    assert events[-1]["choices"][0]["finish_reason"] == "length"  # the stream is well framed
    fresh.remove("dd", "sse_drop_done_downstream")
    assert sse_events(_chat(url))[-1] == "[DONE]"
