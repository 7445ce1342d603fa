"""`llm-chaos bench proxy` and `llm-chaos bench router` end to end, briefly, on the simulated
engine: every figure measured, every goal judged. The goals themselves are judged by full runs
(README, Benchmarks); these short runs only show the benchmarks work. The bare-socket reader of
the proxy benchmark's long streams is checked against canned answers."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.bench.proxy import stream_rate
from harness.cli import main
from harness.errors import TargetError


def _figures(path: Path) -> tuple[dict[str, float | None], dict[str, bool]]:
    data = json.loads(path.read_text())
    return ({f["name"]: f["value"] for f in data["figures"]},
            {g["name"]: g["measured"] for g in data["goals"]})


@pytest.mark.timeout(180)
def test_bench_proxy_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "proxy.json"
    assert main(["bench", "proxy", "--requests", "10", "--latency-requests", "10",
                 "--streams", "1", "--stream-tokens", "500", "--json", str(out)]) == 0
    figures, measured = _figures(out)
    missing = [name for name, value in figures.items() if value is None]
    assert not missing, f"not measured: {missing}"
    assert measured == {"pass-through": True, "latency precision": True, "throughput": True}
    # a 200 ms latency toxic shows, however loaded the machine
    assert 190 < (figures["latency.added_ttft.p50_ms"] or 0) < 260
    assert (figures["throughput.proxy_mb_s"] or 0) > 0
    assert "throughput (MB/s)" in capsys.readouterr().out


@pytest.mark.timeout(180)
def test_bench_router_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "router.json"
    assert main(["bench", "router", "--requests", "10", "--kills", "1", "--kill-model", "sim",
                 "--json", str(out)]) == 0
    figures, measured = _figures(out)
    missing = [name for name, value in figures.items() if value is None]
    assert not missing, f"not measured: {missing}"
    assert all(measured.values()) and measured
    assert "goals" in capsys.readouterr().out


@contextlib.contextmanager
def _answered(reply: bytes) -> Iterator[socket.socket]:
    """A socket whose peer has already sent `reply` and then shut its side."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(reply)
        theirs.shutdown(socket.SHUT_WR)
        ours.settimeout(5)
        yield ours


def test_stream_rate_reads_a_stream_to_its_last_chunk() -> None:
    events = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":" Paris"}}]}\n\n', b"data: [DONE]\n\n"))
    reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + events + b"0\r\n\r\n"
    with _answered(reply) as sock:
        timing = stream_rate(sock, "http://127.0.0.1:9", 1)
    assert timing.size == len(reply)
    assert 0 <= timing.ttft <= timing.e2e


@pytest.mark.parametrize(("reply", "said"), [
    (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", "answered 'HTTP/1.1 404 Not Found'"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nda", "closed the connection"),
])
def test_stream_rate_names_a_bad_answer(reply: bytes, said: str) -> None:
    with _answered(reply) as sock, pytest.raises(TargetError, match=said):
        stream_rate(sock, "http://127.0.0.1:9", 1)
