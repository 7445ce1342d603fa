"""`llm-chaos bench cores`: workers sharing the machine's cores.

The same total load (N concurrent streaming chats, greedy, `ignore_eos`) goes through the
reference target's router to one worker alone, to two workers with the cores split between
them (the fleet's default: each gets max(1, cores // workers) torch threads), and to two
workers that each take every core (the old default, `--worker-threads CORES`). Per-stream
inter-token latency (the gaps between content chunks as the client receives them) at p50 and
p95 is the figure: with every core in each worker, two workers run twice as many OpenMP
threads as there are cores, and their spin-waits starve each other.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..errors import TargetError, UsageError
from ..launcher import start_fleet
from ..machine import describe
from .engine import PROMPTS
from .result import BenchResult, Figure, Goal, Table
from .runner import Benchmark, Progress, add_model_arguments
from .streams import BatchTiming, measure_batch

__all__ = ["BENCHMARK", "percentile"]

ITL_RATIO_GOAL = 2.0  # two workers' ITL p95 over one worker's, same total load


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `bench cores`."""
    add_model_arguments(p)
    p.add_argument("--streams", type=int, default=6,
                   help="concurrent streams, the total load of every setup (default 6, as "
                        "make demo's users)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed batches per setup (default 3, 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="one round per setup")
    p.add_argument("--worker-arg", action="append", default=[],
                   help="extra argument for every worker, e.g. --worker-arg=--dtype=float32")
    p.add_argument("--ready-timeout", type=float, default=300.0,
                   help="seconds the fleet may take to have every worker live (default 300)")


@dataclass(frozen=True)
class _Setup:
    name: str
    label: str
    workers: int
    threads: int  # 0: the fleet's default split
    contrast: bool = False  # shown beside the goal, not part of it: a failure is reported


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


def _wait_live(url: str, workers: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            live = httpx.get(url + "/health", timeout=5).json().get("live_workers") or {}
        except (httpx.HTTPError, ValueError):
            live = {}
        if live and min(live.values()) >= workers:
            return
        time.sleep(0.2)
    raise TargetError(f"{url}: {workers} live worker(s) not reached in time")


def _run_setup(args: argparse.Namespace, setup: _Setup, rounds: int, logs: Path,
               progress: Progress) -> list[BatchTiming]:
    extra = [f"--worker-arg={a}" for a in ["--device=cpu", *args.worker_arg]]
    if setup.threads:
        extra.append(f"--worker-threads={setup.threads}")
    fleet = start_fleet("--model", args.model, "--workers", str(setup.workers), *extra,
                        log_path=logs / f"{setup.name}.log")
    with fleet:
        fleet.wait_ready(timeout=args.ready_timeout)
        _wait_live(fleet.url, setup.workers, time.monotonic() + args.ready_timeout)
        name = httpx.get(fleet.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.streams)]
        measure_batch(fleet.url, name, prompts, min(8, args.max_tokens))  # warm-up
        batches = []
        for r in range(rounds):
            batch = measure_batch(fleet.url, name, prompts, args.max_tokens)
            batches.append(batch)
            gaps = [g for s in batch.streams for g in s.gaps]
            p95 = percentile(gaps, 95)
            progress(f"{setup.label}, round {r + 1}/{rounds}: {batch.tokens_per_s:.1f} "
                     f"tokens/s, ITL p95 {p95 * 1e3 if p95 is not None else float('nan'):.0f} ms")
    return batches


def measure(args: argparse.Namespace, progress: Progress) -> BenchResult:
    rounds = args.rounds or (1 if args.quick else 3)
    if rounds < 1 or args.max_tokens < 2 or args.streams < 1:
        raise UsageError("--rounds and --streams must be 1 or more, --max-tokens 2 or more")
    cores = int(describe()["cores"])
    setups = [_Setup("one", "one worker", 1, 0),
              _Setup("two", "two workers, cores split", 2, 0),
              _Setup("two_all_cores", f"two workers, {cores} threads each", 2, cores,
                     contrast=True)]
    runs: dict[str, list[BatchTiming]] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="llm-chaos-bench-") as tmp:
        for setup in setups:
            try:
                runs[setup.name] = _run_setup(args, setup, rounds, Path(tmp), progress)
            except TargetError as exc:
                if not setup.contrast:
                    raise
                # oversubscribed cores can be slow enough for the router's deadline: a result
                runs[setup.name], failed[setup.name] = [], str(exc)
                progress(f"{setup.label}: not measured: {exc}")
    return _result(args, rounds, cores, setups, runs, failed)


def _result(args: argparse.Namespace, rounds: int, cores: int, setups: list[_Setup],
            runs: dict[str, list[BatchTiming]], failed: dict[str, str] | None = None
            ) -> BenchResult:
    failed = failed or {}
    figures: list[Figure] = []
    rows = []
    for setup in setups:
        batches = runs[setup.name]
        gaps = [g for b in batches for s in b.streams for g in s.gaps]
        tps = statistics.median(b.tokens_per_s for b in batches) if batches else None
        p50, p95 = percentile(gaps, 50), percentile(gaps, 95)
        figures += [
            Figure(f"{setup.name}.itl_p50_s", p50, "s", f"{setup.label}: inter-token gap p50"),
            Figure(f"{setup.name}.itl_p95_s", p95, "s", f"{setup.label}: inter-token gap p95"),
            Figure(f"{setup.name}.output_tokens_per_s", tps, "tokens/s",
                   f"{setup.label}: aggregate output tokens/s (median of rounds)"),
        ]
        rows.append((setup.label, tps, p50 * 1e3 if p50 is not None else None,
                     p95 * 1e3 if p95 is not None else None, len(gaps)))
    value = {f.name: f.value for f in figures}

    def ratio(a: str, b: str) -> float | None:
        x, y = value.get(a), value.get(b)
        return x / y if x is not None and y else None

    figures += [
        Figure("two_vs_one.itl_p95_ratio", ratio("two.itl_p95_s", "one.itl_p95_s"), "x",
               "two workers (cores split) over one worker: ITL p95"),
        Figure("two_all_cores_vs_one.itl_p95_ratio",
               ratio("two_all_cores.itl_p95_s", "one.itl_p95_s"), "x",
               "two workers with every core each over one worker: ITL p95"),
    ]
    goals = (Goal("two workers share the cores", "two_vs_one.itl_p95_ratio", "<=",
                  ITL_RATIO_GOAL, "two workers' ITL p95 within 2x one worker's at the same "
                  "total load"),)
    table = Table(f"{args.streams} streams of {args.max_tokens} tokens through the router, "
                  f"{cores} cores", ("setup", "tokens/s", "ITL p50 ms", "ITL p95 ms", "gaps"),
                  tuple(rows))
    return BenchResult(
        bench="cores",
        config={"model": args.model, "streams": args.streams, "max_tokens": args.max_tokens,
                "rounds": rounds, "cores": cores, "worker_args": list(args.worker_arg)},
        figures=tuple(figures), goals=goals, tables=(table,),
        notes=("ITL: gaps between content chunks as the client receives them, every stream "
               "of every round pooled",
               *(f"{label}: a stream failed, so it is not measured: {failed[name]}"
                 for name, label in ((x.name, x.label) for x in setups) if name in failed)))


BENCHMARK = Benchmark(
    name="cores",
    help="one worker against two sharing the cores: inter-token latency at the same load",
    description="The same concurrent streaming load through the router to one worker, to two "
                "workers with the cores split between them (the default), and to two workers "
                "taking every core each: per-stream inter-token latency p50/p95 and tokens/s.",
    add_arguments=add_arguments,
    measure=measure,
)
