"""The proxy changes no byte: every connection's bytes arrive whole and in order.

A client writes as soon as it has connected, often before the proxy has its upstream
connection: those bytes wait, and what comes after them must not overtake them (it did, about
once in a thousand connections, and the upstream answered 400 to a body sent before its head).
Through the echo server each connection gets back exactly what it sent, or the proxy moved,
lost or added something.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.launcher import ServerProcess, free_port

from .conftest import Proxy

CONNECTIONS = 600  # the reordering above showed in ~1 of 1000; 600 x 3 rounds below


async def _one(address: str, pieces: list[bytes]) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for piece in pieces:  # each piece its own write, like an HTTP head and its body
            writer.write(piece)
            await asyncio.sleep(0)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def _many(address: str, conversations: list[list[bytes]], concurrency: int
                ) -> list[bytes]:
    gate = asyncio.Semaphore(concurrency)

    async def limited(pieces: list[bytes]) -> bytes:
        async with gate:
            return await _one(address, pieces)

    return await asyncio.gather(*(limited(p) for p in conversations))


def _conversation(i: int) -> list[bytes]:
    head = f"POST /{i} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
    return [head, bytes([i % 251]) * (1 + (i * 7919) % 70_000), f"end {i}".encode()]


def _differences(sent: list[list[bytes]], got: list[bytes]) -> list[str]:
    out = []
    for i, (pieces, back) in enumerate(zip(sent, got, strict=True)):
        want = b"".join(pieces)
        if back != want:
            out.append(f"connection {i}: sent {len(want)} bytes starting {want[:24]!r}, "
                       f"got back {len(back)} starting {back[:24]!r}")
    return out


def test_every_byte_in_order_on_many_fresh_connections(fresh: Proxy, echo: str) -> None:
    """Without toxics, with a latency toxic each way, with a slicer: nothing moved or lost."""
    listen = fresh.create("bytes", echo)
    sent = [_conversation(i) for i in range(CONNECTIONS)]
    rounds = [("no toxic", []),
              ("latency both ways", [dict(type="latency", stream="upstream",
                                          attributes={"latency": 5, "jitter": 5}),
                                     dict(type="latency", stream="downstream",
                                          attributes={"latency": 5, "jitter": 5})]),
              ("slicer upstream", [dict(type="slicer", stream="upstream",
                                        attributes={"average_size": 4096,
                                                    "size_variation": 2048, "delay": 0})])]
    for label, toxics in rounds:
        for toxic in toxics:
            fresh.toxic("bytes", **toxic)
        got = asyncio.run(_many(listen, sent, 64))
        diffs = _differences(sent, got)
        assert diffs == [], f"{label}: {len(diffs)} of {CONNECTIONS} changed: {diffs[:3]}"
        for toxic in fresh.api.get("/proxies/bytes/toxics").json():
            fresh.remove("bytes", toxic["name"])


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(conversations=st.lists(st.lists(st.binary(min_size=1, max_size=20_000), min_size=1,
                                       max_size=6), min_size=1, max_size=24),
       concurrency=st.integers(1, 24))
def test_bytes_unchanged_for_any_sizes_and_concurrency(
        fresh: Proxy, echo: str, conversations: list[list[bytes]], concurrency: int) -> None:
    names = fresh.api.get("/proxies").json()
    listen = names["any"]["listen"] if "any" in names else fresh.create("any", echo)
    got = asyncio.run(_many(listen, conversations, concurrency))
    assert _differences(conversations, got) == []


def test_keep_alive_client_gets_only_2xx(fresh: Proxy, sim_worker: ServerProcess) -> None:
    """A real HTTP client reusing its connections, 8 at a time: every request a 200."""
    url = "http://" + fresh.create("keepalive", sim_worker.url.removeprefix("http://"))
    body = {"model": "sim", "max_tokens": 2,
            "messages": [{"role": "user", "content": "x" * 2000}]}

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            gate = asyncio.Semaphore(8)

            async def one() -> int:
                async with gate:
                    resp = await client.post("/v1/chat/completions", json=body)
                    return resp.status_code

            return await asyncio.gather(*(one() for _ in range(1000)))

    codes = asyncio.run(run())
    assert [c for c in codes if c != 200] == []


KEEP_ALIVE_REQUESTS = 10_000


@pytest.fixture(scope="module")
def http_echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An HTTP keep-alive echo server process (its body back as the response)."""
    port = free_port()
    logs: Path = tmp_path_factory.mktemp("http-echo")
    proc = ServerProcess([sys.executable, "-m", "tests.harness.proxy.http_echo", str(port)],
                         f"http://127.0.0.1:{port}", logs / "http-echo.log")
    try:
        proc.wait_ready(timeout=30)
        yield proc
    finally:
        proc.stop()


@pytest.mark.long
def test_ten_thousand_keep_alive_requests_arrive_byte_for_byte(
        fresh: Proxy, http_echo: ServerProcess) -> None:
    """A real keep-alive client (8 connections reused for 10,000 requests, bodies of 0 bytes
    to 64 KiB): the upstream receives each body exactly (it echoes it back, with the request
    line it parsed), and every answer is a 200."""
    url = "http://" + fresh.create("echo-http", http_echo.url.removeprefix("http://"))

    def body(i: int) -> bytes:
        size = (i * 7919) % 65_536 if i % 10 == 0 else (i * 131) % 2_000
        return hashlib.sha256(str(i).encode()).digest() * (size // 32) + bytes([i % 256]) * (
            size % 32)

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            gate = asyncio.Semaphore(8)

            async def one(i: int) -> str | None:
                sent = body(i)
                async with gate:
                    resp = await client.post(f"/r/{i}", content=sent)
                if resp.status_code != 200:
                    return f"request {i}: {resp.status_code}"
                if resp.headers.get("x-echo-request") != f"POST /r/{i}":
                    return f"request {i}: the upstream saw {resp.headers.get('x-echo-request')}"
                if resp.content != sent:
                    return f"request {i}: sent {len(sent)} bytes, upstream got " \
                           f"{len(resp.content)}, differing"
                return None

            results = await asyncio.gather(*(one(i) for i in range(KEEP_ALIVE_REQUESTS)))
            return [r for r in results if r is not None]

    problems = asyncio.run(run())
    assert problems == [], f"{len(problems)} of {KEEP_ALIVE_REQUESTS}: {problems[:5]}"
