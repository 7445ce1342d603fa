"""Removing a toxic while 64 streams pass through it: fast, and not a byte lost."""

from __future__ import annotations

import asyncio
import time

import httpx

from harness.launcher import ServerProcess

from .conftest import Proxy

STREAMS = 64


def _body(i: int) -> dict[str, object]:
    return {"model": "sim", "max_tokens": 40, "stream": True,
            "messages": [{"role": "user", "content": f"stream {i}"}]}


def _content(raw: bytes) -> str:
    # the text the stream carried, without the per-request ids and timestamps
    parts = []
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and '"content":"' in line:
            parts.append(line.split('"content":"', 1)[1].split('"', 1)[0])
        elif line == "data: [DONE]":
            parts.append("[DONE]")
    return "".join(parts)


async def _stream(client: httpx.AsyncClient, url: str, i: int) -> bytes:
    async with client.stream("POST", url + "/v1/chat/completions", json=_body(i)) as resp:
        assert resp.status_code == 200
        return b"".join([piece async for piece in resp.aiter_raw()])


def _remove(api: str) -> list[float]:
    times = []
    with httpx.Client(base_url=api, timeout=5) as client:
        client.get("/version")  # connected before the clock starts
        for name in ("latency_downstream", "slicer_downstream"):
            start = time.perf_counter()
            assert client.delete(f"/proxies/load/toxics/{name}").status_code == 204
            times.append(time.perf_counter() - start)
    return times


async def _run(url: str, direct: str, api: str
               ) -> tuple[list[float], list[bytes], list[bytes]]:
    limits = httpx.Limits(max_connections=STREAMS * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        expected = await asyncio.gather(*(_stream(client, direct, i) for i in range(STREAMS)))
        tasks = [asyncio.create_task(_stream(client, url, i)) for i in range(STREAMS)]
        await asyncio.sleep(0.25)  # every stream is under way, data held in both toxics
        early = [t.exception() or t.result()[-300:] for t in tasks if t.done()]
        assert early == [], f"{len(early)} stream(s) ended before the toxics were removed"
        # timed from another thread: this loop is busy reading the 64 streams
        removals = await asyncio.to_thread(_remove, api)
        got = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return removals, list(expected), list(got)


def test_remove_toxics_under_64_streams(fresh: Proxy, sim_worker: ServerProcess) -> None:
    url = "http://" + fresh.create("load", sim_worker.url.removeprefix("http://"))
    fresh.toxic("load", type="latency", attributes={"latency": 150, "jitter": 20})
    fresh.toxic("load", type="slicer",
                attributes={"average_size": 64, "size_variation": 32, "delay": 500})
    removals, expected, got = asyncio.run(_run(url, sim_worker.url, fresh.proc.url))
    print(f"removing a toxic under {STREAMS} streams: "
          f"{', '.join(f'{r * 1000:.1f}' for r in removals)} ms")
    assert max(removals) < 0.1
    for want, have in zip(expected, got, strict=True):
        assert _content(have) == _content(want)
        assert _content(have).endswith("[DONE]")
