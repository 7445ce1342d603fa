"""`llm-chaos bench audit`: what the router's audit log costs.

Two fleets on the simulated engine, one with `--audit-log` (fsync per group commit) and one
without, are loaded in turn by the same closed loop of concurrent streams (16 by default),
rounds alternating on/off in one run so drift on a shared machine hits both alike; a round
counts the tokens that arrive within its window. The cost is
1 - (tokens/s with the log) / (tokens/s without), goal <= 5 %. The log written is then checked
with the verifier, and its records per fsync show how much group commit shares.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

import httpx

from ..audit import verify
from ..errors import UsageError
from ..launcher import ServerProcess, free_port, start_fleet
from ..loadgen.sse import aiter_events
from .result import BenchResult, Figure, Goal, Table
from .runner import Benchmark, Progress

__all__ = ["BENCHMARK"]

COST_GOAL_PCT = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `bench audit`."""
    p.add_argument("--streams", type=int, default=16, help="concurrent streams (16)")
    p.add_argument("--rounds", type=int, default=6, help="rounds per fleet, alternating (6)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of a round (3)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (64)")
    p.add_argument("--sim-ttft", type=float, default=0.01, help="engine TTFT in s (0.01)")
    p.add_argument("--sim-itl", type=float, default=0.005, help="engine ITL in s (0.005)")
    p.add_argument("--audit-fsync", choices=["group", "off"], default="group",
                   help="the audited fleet's --audit-fsync (group)")
    p.add_argument("--ready-timeout", type=float, default=120.0)


def _fleet(logs: Path, args: argparse.Namespace, audit: Path | None) -> ServerProcess:
    port = free_port()
    return start_fleet("--model", "sim", "--worker-capacity", str(max(16, args.streams)),
                       f"--worker-arg=--sim-ttft={args.sim_ttft}",
                       f"--worker-arg=--sim-itl={args.sim_itl}",
                       *(["--audit-fsync", args.audit_fsync] if audit is not None else []),
                       log_path=logs / f"fleet-{port}.log", admin_token="bench-audit",
                       audit_log=audit, port=port)


async def _round(url: str, streams: int, seconds: float, max_tokens: int) -> tuple[int, int,
                                                                                  float]:
    """Closed loop for `seconds`: (requests finished, tokens received, seconds) within that
    window.

    Only what arrives inside the window counts, and the requests still running at its end
    finish uncounted. Counting whole requests over the time the last one took instead made
    the figure jump: a stream fits ceil(seconds / latency) requests, so a latency ~0.5 % over
    a divisor of the window lost a whole request per stream (~10 % of the tokens) while the
    wall clock still waited for the streams that fitted theirs."""
    body = {"model": "sim", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "benchmark the audit log"}]}
    done = [0, 0]
    start = time.perf_counter()
    end = start + seconds
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)

    async def user(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < end:
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                async for event in aiter_events(resp.aiter_bytes()):
                    if time.perf_counter() >= end:
                        continue  # past the window: finish the request, count nothing
                    if event.data == "[DONE]":
                        done[0] += 1
                    elif '"content":"' in event.data and '"content":""' not in event.data:
                        done[1] += 1  # a token (the role-only first chunk has no content)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(user(client) for _ in range(streams)))
    return done[0], done[1], seconds


def _metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else None


def measure(args: argparse.Namespace, progress: Progress) -> BenchResult:
    """Throughput with the audit log on and off, alternating rounds in one run."""
    if args.streams < 1 or args.rounds < 1 or args.seconds <= 0:
        raise UsageError("--streams and --rounds must be 1 or more, --seconds above 0")
    rows: list[tuple[int, str, int, float]] = []
    totals = {"on": [0, 0.0], "off": [0, 0.0]}  # events, seconds
    with tempfile.TemporaryDirectory(prefix="llm-chaos-bench-audit-") as tmp:
        logs = Path(tmp)
        audit_path = logs / "audit.jsonl"
        fleets = {"on": _fleet(logs, args, audit_path), "off": _fleet(logs, args, None)}
        try:
            for fleet in fleets.values():
                fleet.wait_ready(args.ready_timeout)
            for fleet in fleets.values():  # warm both
                asyncio.run(_round(fleet.url, args.streams, 0.5, args.max_tokens))
            progress(f"{args.rounds} rounds of {args.seconds:g} s per fleet, "
                     f"{args.streams} streams, alternating")
            for r in range(args.rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                for name in order:
                    n, events, wall = asyncio.run(_round(fleets[name].url, args.streams,
                                                         args.seconds, args.max_tokens))
                    totals[name][0] += events
                    totals[name][1] += wall
                    rows.append((r + 1, name, n, events / wall))
                progress(f"round {r + 1}: on {rows[-2 if order[0] == 'on' else -1][3]:.0f}, "
                         f"off {rows[-1 if order[0] == 'on' else -2][3]:.0f} tokens/s")
            metrics = httpx.get(fleets["on"].url + "/metrics", timeout=5).text
        finally:
            for fleet in fleets.values():
                fleet.stop()
        report = verify([audit_path])
    on = totals["on"][0] / totals["on"][1] if totals["on"][1] else None
    off = totals["off"][0] / totals["off"][1] if totals["off"][1] else None
    cost = (1 - on / off) * 100 if on and off else None
    records = _metric(metrics, "llm_chaos_audit_records")
    commits = _metric(metrics, "llm_chaos_audit_commits")
    per_commit = records / commits if records and commits else None
    figures = (
        Figure("audit_on.tokens_per_s", on, "tokens/s",
               f"streamed tokens/s at {args.streams} streams with the audit log "
               f"(--audit-fsync {args.audit_fsync})"),
        Figure("audit_off.tokens_per_s", off, "tokens/s",
               f"streamed tokens/s at {args.streams} streams without the audit log"),
        Figure("audit.cost_pct", cost, "%", "throughput lost to the audit log"),
        Figure("audit.records_per_fsync", per_commit, "records",
               "records written per group commit (write + fsync)"),
        Figure("audit.verifies", float(report.ok), "bool",
               "the log written during the benchmark passes `audit verify`"),
        Figure("audit.requests", float(report.requests), "requests", "requests in the log"),
    )
    goals = (
        Goal("audit cost", "audit.cost_pct", "<=", COST_GOAL_PCT,
             f"the audit log costs at most {COST_GOAL_PCT:g} % of throughput at "
             f"{args.streams} streams"),
        Goal("audit verifies", "audit.verifies", ">=", 1,
             "the log written under load verifies"),
    )
    tables = (
        Table(f"throughput, {args.streams} concurrent streams, simulated engine",
              ("round", "audit log", "requests", "tokens/s"),
              tuple((r, name, n, round(tps, 1)) for r, name, n, tps in rows)),
        Table("summary", ("audit log", "tokens/s"),
              (("on", round(on or 0, 1)), ("off", round(off or 0, 1)),
               ("cost %", round(cost, 2) if cost is not None else None))),
    )
    return BenchResult(bench="audit", config={
        "streams": args.streams, "rounds": args.rounds, "seconds": args.seconds,
        "max_tokens": args.max_tokens, "sim_ttft": args.sim_ttft, "sim_itl": args.sim_itl,
        "audit_fsync": args.audit_fsync},
        figures=figures, goals=goals, tables=tables,
        details={"rounds": [{"round": r, "audit": name, "requests": n, "tokens_per_s": tps}
                            for r, name, n, tps in rows],
                 "verify": {**report.to_json(), "problems": [str(p) for p in
                                                             report.problems[:10]]}})


BENCHMARK = Benchmark(
    name="audit",
    help="throughput with the router's audit log on vs off (simulated engine)",
    description="Streams at a fixed concurrency through two simulated-engine fleets, one "
                "writing the audit log (fsync per group commit) and one not, in alternating "
                "rounds of one run; reports the throughput cost (goal <= 5 %), records per "
                "fsync, and whether the log written verifies.",
    add_arguments=add_arguments,
    measure=measure,
)
