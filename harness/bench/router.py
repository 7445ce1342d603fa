"""`llm-chaos bench router`: what the router costs, and how fast the fleet heals.

1. Time to first token through the router minus straight to the same worker (simulated
   engine, requests interleaved in one run): the router's overhead, goal <= 1 ms at p50.
2. SIGKILL of a worker (SmolLM2 by default) until the supervisor reports a live
   replacement with a new pid, goal <= 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ..errors import TargetError, UsageError
from ..launcher import ServerProcess, free_port, start_fleet
from .result import BenchResult, Figure, Goal, Table
from .runner import Benchmark, Progress

__all__ = ["BENCHMARK"]

_TOKEN = "bench-router-token"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=300,
                   help="requests per path (router and direct) for the overhead figure")
    p.add_argument("--kills", type=int, default=3, help="worker SIGKILLs to time")
    p.add_argument("--kill-model", default="smollm2", help="model of the killed worker")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--skip", action="append", default=[], choices=["overhead", "restart"],
                   help="leave out a part")


def _fleet(model: str, logs: Path, *extra: str) -> ServerProcess:
    port = free_port()
    return start_fleet("--model", model, *extra, log_path=logs / f"fleet-{port}.log",
                       admin_token=_TOKEN, port=port)


def _workers(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    resp = client.get(url + "/admin/workers", headers={"Authorization": f"Bearer {_TOKEN}"})
    return resp.json()["workers"]  # type: ignore[no-any-return]


async def _ttft(client: httpx.AsyncClient, url: str) -> float:
    body = {"model": "sim", "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": "ping"}]}
    start = time.perf_counter()
    ttft: float | None = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if ttft is None and '"content":" ' in line:  # the first content-bearing event
                ttft = time.perf_counter() - start
    if ttft is None:
        raise TargetError(f"no content from {url}")
    return ttft


def _overhead(n: int, logs: Path, timeout: float, progress: Progress) -> tuple[list[float],
                                                                              list[float]]:
    fleet = _fleet("sim", logs, "--worker-arg=--sim-ttft=0.01",
                   "--worker-arg=--sim-itl=0.005")
    try:
        fleet.wait_ready(timeout)
        with httpx.Client(timeout=10) as client:
            (worker,) = _workers(client, fleet.url)
        direct_url = f"http://127.0.0.1:{worker['port']}"
        progress(f"overhead: {n} requests each through the router and straight to "
                 f"worker {worker['id']}, interleaved")

        async def run() -> tuple[list[float], list[float]]:
            routed, direct = [], []
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(5):  # warm both paths' connections
                    await _ttft(client, fleet.url)
                    await _ttft(client, direct_url)
                for i in range(n):
                    first, second = (fleet.url, direct_url) if i % 2 else (direct_url, fleet.url)
                    a = await _ttft(client, first)
                    b = await _ttft(client, second)
                    routed.append(a if first == fleet.url else b)
                    direct.append(b if first == fleet.url else a)
            return routed, direct

        return asyncio.run(run())
    finally:
        fleet.stop()


def _restarts(model: str, kills: int, logs: Path, timeout: float, progress: Progress
              ) -> list[float]:
    fleet = _fleet(model, logs)
    times: list[float] = []
    try:
        progress(f"restart: starting a {model} fleet")
        fleet.wait_ready(timeout)
        with httpx.Client(timeout=5) as client:
            for k in range(kills):
                (worker,) = _workers(client, fleet.url)
                killed_at = time.monotonic()
                os.kill(worker["pid"], signal.SIGKILL)
                while True:
                    if time.monotonic() - killed_at > timeout:
                        raise TargetError(f"no live replacement after {timeout:.0f} s")
                    (now,) = _workers(client, fleet.url)
                    if now["state"] == "live" and now["pid"] != worker["pid"]:
                        times.append(time.monotonic() - killed_at)
                        break
                    time.sleep(0.01)
                progress(f"restart {k + 1}/{kills}: live replacement after {times[-1]:.2f} s")
                time.sleep(0.5)
    finally:
        fleet.stop()
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def measure(args: argparse.Namespace, progress: Progress) -> BenchResult:
    """Measure the router's TTFT overhead and the fleet's kill-to-live time."""
    if args.requests < 10 or args.kills < 0:
        raise UsageError("--requests must be 10 or more and --kills 0 or more")
    skip = set(args.skip)
    routed: list[float] = []
    direct: list[float] = []
    restarts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="llm-chaos-bench-router-") as tmp:
        logs = Path(tmp)
        if "overhead" not in skip:
            routed, direct = _overhead(args.requests, logs, args.ready_timeout, progress)
        if "restart" not in skip and args.kills:
            restarts = _restarts(args.kill_model, args.kills, logs, args.ready_timeout,
                                 progress)
    ms = 1000.0
    p50_r = statistics.median(routed) * ms if routed else None
    p50_d = statistics.median(direct) * ms if direct else None
    overhead = p50_r - p50_d if p50_r is not None and p50_d is not None else None
    kill = statistics.median(restarts) if restarts else None
    figures = (
        Figure("ttft.router.p50_ms", p50_r, "ms", "TTFT through the router, median"),
        Figure("ttft.direct.p50_ms", p50_d, "ms", "TTFT straight to the same worker, median"),
        Figure("ttft.router.p99_ms", _pct(routed, 0.99) * ms if routed else None, "ms",
               "TTFT through the router, p99"),
        Figure("ttft.direct.p99_ms", _pct(direct, 0.99) * ms if direct else None, "ms",
               "TTFT straight to the worker, p99"),
        Figure("router.overhead.p50_ms", overhead, "ms",
               "median TTFT through the router minus median TTFT direct"),
        Figure("restart.kill_to_live_s", kill, "s",
               f"SIGKILL of a {args.kill_model} worker to a live replacement, median"),
        Figure("restart.kill_to_live_max_s", max(restarts) if restarts else None, "s",
               "the slowest of the timed restarts"),
    )
    goals = (
        Goal("router overhead", "router.overhead.p50_ms", "<=", 1.0,
             "the router adds at most 1 ms to time to first token at p50"),
        Goal("replacement", "restart.kill_to_live_s", "<=", 3.0,
             "a killed worker is replaced by a live one within 3 s"),
    )
    rows = []
    if routed:
        rows = [("router", round(p50_r or 0, 3), round(_pct(routed, 0.99) * ms, 3)),
                ("direct", round(p50_d or 0, 3), round(_pct(direct, 0.99) * ms, 3)),
                ("overhead", round(overhead or 0, 3), None)]
    tables = [Table("time to first token (ms), simulated engine", ("path", "p50", "p99"),
                    tuple(rows))]
    if restarts:
        tables.append(Table(f"SIGKILL to live replacement ({args.kill_model})",
                            ("kill", "seconds"),
                            tuple((i + 1, round(t, 3)) for i, t in enumerate(restarts))))
    return BenchResult(bench="router", config={"requests": args.requests, "kills": args.kills,
                               "kill_model": args.kill_model},
                       figures=figures, goals=goals, tables=tuple(tables),
                       details={"routed_s": routed, "direct_s": direct,
                                "restarts_s": restarts})


BENCHMARK = Benchmark(
    name="router",
    help="router TTFT overhead (simulated engine) and kill-to-live time (SmolLM2)",
    description="Time to first token through the router minus straight to the same worker, "
                "interleaved in one run on the simulated engine; and the time from a worker "
                "SIGKILL to a live replacement.",
    add_arguments=add_arguments,
    measure=measure,
)
