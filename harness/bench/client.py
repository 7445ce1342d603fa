"""`llm-chaos bench client`: how exactly the load generator times token streams, and how fast.

Against the simulated engine (known schedule, and its own record of when it emitted each
token), at rising concurrency, for our Locust user and for a plain Locust `HttpUser` that
streams with `iter_content` (the common way today), each in its own Locust process:
- TTFT error: when the client saw the first token minus when the engine emitted it;
- ITL error: each recorded inter-token gap minus the engine's gap;
- streamed events/s: content events the client took in per second;
- sustainable events/s: the highest events/s among the levels whose p99 errors stay <= 1 ms.
The harness reaches the engine only over HTTP and process control (Locust in subprocesses).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..errors import TargetError, UsageError
from ..launcher import ServerProcess, realtime_prefix, start_worker
from ..runner.rundir import HISTORY_FILE
from .result import BenchResult, Cell, Figure, Goal, Table
from .runner import Benchmark, Progress, parse_levels

__all__ = ["BENCHMARK"]

CLIENTS = {"ours": "CalibrationUser", "baseline": "IterContentBaselineUser"}
ERROR_LIMIT_S = 0.001
VS_BASELINE_GOAL = 2.0


def _users(text: str) -> list[int]:
    return parse_levels(text, "user counts")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `bench client`."""
    p.add_argument("--users", type=_users, default=[4, 16, 32, 64], metavar="N,N,...",
                   help="concurrent Locust users per level (default 4,16,32,64)")
    p.add_argument("--seconds", type=float, default=6.0, help="run time per level (6)")
    p.add_argument("--tokens", type=int, default=32, help="tokens per request (32)")
    p.add_argument("--sim-ttft", type=float, default=0.05, help="engine TTFT in s (0.05)")
    p.add_argument("--sim-itl", type=float, default=0.01, help="engine ITL in s (0.01)")
    p.add_argument("--realtime", action="store_true",
                   help="run the engine and Locust at real-time priority (chrt -f 10, needs "
                        "root or CAP_SYS_NICE), so other work on a shared machine is not "
                        "measured as client error")


@dataclass(frozen=True)
class LevelRun:
    """Errors and rate of one client at one user count."""

    client: str
    users: int
    requests: int
    failed: int
    events_per_s: float | None
    ttft_errors: tuple[float, ...]
    itl_errors: tuple[float, ...]
    cpu_us_per_event: float | None = None

    def q(self, values: Sequence[float], p: float) -> float | None:
        if not values:
            return None
        ordered = sorted(abs(v) for v in values)
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    @property
    def worst_p99(self) -> float | None:
        a, b = self.q(self.ttft_errors, 0.99), self.q(self.itl_errors, 0.99)
        return None if a is None or b is None else max(a, b)


def _locust() -> str:
    exe = Path(sys.executable).with_name("locust")
    found = str(exe) if exe.exists() else shutil.which("locust")
    if found is None:
        raise UsageError("the `locust` command is not installed in this environment")
    return found


def _prefix(realtime: bool) -> list[str]:
    if not realtime:
        return []
    prefix = realtime_prefix()
    if not prefix:
        raise UsageError("--realtime needs `chrt` and permission for SCHED_FIFO (root or "
                         "CAP_SYS_NICE); run without it")
    return prefix


def _run_level(url: str, client: str, users: int, args: argparse.Namespace, tmp: Path,
               prefix: list[str]) -> LevelRun:
    from .. import loadgen

    locustfile = Path(loadgen.__file__).with_name("calibration.py")
    run_dir = tmp / f"{client}-{users}"
    cmd = [*prefix, _locust(), "-f", str(locustfile), CLIENTS[client], "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{args.seconds:g}s", "--host", url,
           "--run-dir", str(run_dir), "--max-tokens", str(args.tokens), "--model", "sim",
           "--tokenizer", "none", "--only-summary"]
    log = tmp / f"{client}-{users}.log"
    with open(log, "wb") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False,
                              timeout=args.seconds + 120)
    history = run_dir / HISTORY_FILE
    if done.returncode not in (0, 1) or not history.exists():
        raise TargetError(f"locust ({client}, {users} users) exited with {done.returncode}:\n"
                          + log.read_text(errors="replace")[-2000:])
    records = [json.loads(line)["value"] for line in history.read_text().splitlines()]
    run = _compare(url, client, users, records)
    summary = json.loads((run_dir / "loadgen.json").read_text())
    cpu = summary.get("cpu_seconds_during_test")
    events = sum(len(r["itl"]) + 1 for r in records if r["status"] == "ok")
    if cpu is not None and events:
        run = dataclasses.replace(run, cpu_us_per_event=cpu / events * 1e6)
    return run


def _compare(url: str, client: str, users: int, records: list[dict[str, Any]]) -> LevelRun:
    ok = [r for r in records if r["status"] == "ok"]
    ttft: list[float] = []
    itl: list[float] = []
    events = 0
    with httpx.Client(base_url=url, timeout=10) as http:
        for rec in ok:
            trace = http.get(f"/debug/sim/trace/{rec['request_id']}").json()
            emitted = trace["emitted"]
            if rec["ttft"] is None or len(rec["itl"]) != len(emitted) - 1:
                continue
            ttft.append(rec["sent_monotonic"] + rec["ttft"] - emitted[0])
            gaps = [b - a for a, b in itertools.pairwise(emitted)]
            itl += [ours - theirs for ours, theirs in zip(rec["itl"], gaps, strict=True)]
            events += len(emitted)
    rate = None
    if ok:
        start = min(r["sent_at"] for r in ok)
        end = max(r["sent_at"] + r["e2e"] for r in ok)
        rate = events / (end - start) if end > start else None
    return LevelRun(client, users, len(records), len(records) - len(ok), rate, tuple(ttft),
                    tuple(itl))


def _start_sim(args: argparse.Namespace, tmp: Path, prefix: list[str]) -> ServerProcess:
    proc = start_worker("sim", args=["--sim-ttft", str(args.sim_ttft), "--sim-itl",
                                     str(args.sim_itl)], log_dir=tmp, prefix=prefix)
    proc.wait_ready(timeout=60)
    return proc


def _sustainable(runs: Sequence[LevelRun]) -> float | None:
    rates = [r.events_per_s for r in runs if r.events_per_s is not None
             and r.worst_p99 is not None and r.worst_p99 <= ERROR_LIMIT_S]
    return max(rates) if rates else None


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


def measure(args: argparse.Namespace, progress: Progress) -> BenchResult:
    """Run both clients at every user count against one simulated engine."""
    if args.seconds <= 0 or args.tokens < 2:
        raise UsageError("--seconds must be > 0 and --tokens >= 2")
    prefix = _prefix(args.realtime)
    runs: dict[str, list[LevelRun]] = {c: [] for c in CLIENTS}
    with tempfile.TemporaryDirectory(prefix="llm-chaos-bench-client-") as tmpdir:
        tmp = Path(tmpdir)
        sim = _start_sim(args, tmp, prefix)
        try:
            for users in args.users:
                for client in CLIENTS:
                    progress(f"{client}: {users} users for {args.seconds:g} s")
                    runs[client].append(_run_level(sim.url, client, users, args, tmp, prefix))
        finally:
            sim.stop()
    figures: list[Figure] = []
    rows: list[tuple[Cell, ...]] = []
    for client, level_runs in runs.items():
        for r in level_runs:
            key = f"{client}.users_{r.users}"
            vals = {
                "ttft_error_p50_ms": _ms(r.q(r.ttft_errors, 0.5)),
                "ttft_error_p99_ms": _ms(r.q(r.ttft_errors, 0.99)),
                "itl_error_p50_ms": _ms(r.q(r.itl_errors, 0.5)),
                "itl_error_p99_ms": _ms(r.q(r.itl_errors, 0.99)),
                "events_per_s": r.events_per_s,
                "cpu_us_per_event": r.cpu_us_per_event,
            }
            for name, value in vals.items():
                unit = {"events_per_s": "events/s", "cpu_us_per_event": "us"}.get(name, "ms")
                figures.append(Figure(f"{key}.{name}", value, unit,
                                      f"{client}, {r.users} users: {name.replace('_', ' ')}"))
            rows.append((client, r.users, r.requests, r.failed, *vals.values()))
        cpu = [r.cpu_us_per_event for r in level_runs if r.cpu_us_per_event is not None]
        figures.append(Figure(f"{client}.cpu_us_per_event", min(cpu) if cpu else None, "us",
                              f"{client}: client CPU per streamed event (lowest level)"))
        figures.append(Figure(f"{client}.sustainable_events_per_s", _sustainable(level_runs),
                              "events/s", f"{client}: highest events/s with p99 TTFT and ITL "
                              "errors <= 1 ms"))
    ours = _sustainable(runs["ours"])
    base = _sustainable(runs["baseline"])
    ratio = ours / base if ours is not None and base else None
    figures.append(Figure("ours.vs_baseline", ratio, "x",
                          "our sustainable events/s over the iter_content baseline's"))
    goals = (Goal("vs_baseline", "ours.vs_baseline", ">=", VS_BASELINE_GOAL,
                  "sustainable streamed events/s at p99 error <= 1 ms, vs HttpUser + "
                  "iter_content"),)
    table = Table("client timing error against the simulated engine (|error|, ms)",
                  ("client", "users", "requests", "not ok", "TTFT p50", "TTFT p99", "ITL p50",
                   "ITL p99", "events/s", "CPU us/event"), tuple(rows))
    summary = Table("sustainable streamed events/s (p99 errors <= 1 ms)",
                    ("client", "events/s"), (("ours", ours), ("baseline", base),
                                             ("ratio", ratio)))
    notes = ["`not ok` counts requests cut by the end of a level (ours records them as "
             "interrupted; the baseline does not record them)",
             "the engine runs on the same machine: where it runs out of CPU first, both "
             "clients' errors grow with it, and the ratio says little about the clients"]
    if not args.realtime:
        notes.append("without --realtime, other processes on the machine add to the error")
    return BenchResult(
        bench="client",
        config={"users": args.users, "seconds": args.seconds, "tokens": args.tokens,
                "sim_ttft": args.sim_ttft, "sim_itl": args.sim_itl,
                "realtime": args.realtime},
        figures=tuple(figures), goals=goals, tables=(table, summary), notes=tuple(notes),
        details={c: [{"users": r.users, "requests": r.requests, "failed": r.failed,
                      "events_per_s": r.events_per_s} for r in rs] for c, rs in runs.items()},
    )


BENCHMARK = Benchmark(
    name="client",
    help="load-generator timing error and events/s vs a plain Locust iter_content client",
    description="Calibrate the Locust load generator against the simulated engine's own "
                "record at rising user counts: TTFT and ITL error (p50, p99) and the highest "
                "streamed events/s with p99 error <= 1 ms, beside a plain Locust HttpUser "
                "streaming with iter_content, in the same run.",
    add_arguments=add_arguments,
    measure=measure,
)
