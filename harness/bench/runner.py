"""How every benchmark runs: its own options plus --json and --check, progress on stderr,
the result printed as tables on stdout under the machine it ran on, and one exit status rule.

Exit status: 0 when the benchmark ran (goals are reported, met or not); with --check, 1 when a
measured goal was missed and 3 when none was missed but one could not be measured (the run's
valid / invalid / unknown mapping). Errors that stop a benchmark keep the harness's own codes
(2 for bad input, 1 for a target that failed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..machine import describe, one_line
from .result import BenchResult, render_table

__all__ = ["Benchmark", "Progress", "add_common_arguments", "exit_status", "run_benchmark"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Benchmark:
    """One `llm-chaos bench NAME`: its options and the function that measures."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    measure: Callable[[argparse.Namespace, Progress], BenchResult]


def parse_levels(text: str, what: str = "concurrency levels") -> list[int]:
    """`--streams 1,4,16`-style option values: distinct positive integers, sorted."""
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") \
            from exc
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError(f"{what} must be 1 or more")
    return levels


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark takes."""
    parser.add_argument("--json", type=Path, metavar="PATH", dest="json_path",
                        help="also write every figure, each goal and whether it was met")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a goal is missed (3 when one could not be measured)")


def add_model_arguments(parser: argparse.ArgumentParser,
                        models: str = "smollm2 (default), tiny or a local Hugging Face folder"
                        ) -> None:
    """`--model` and `--max-tokens` of the benchmarks that start reference workers."""
    parser.add_argument("--model", default="smollm2", help=f"worker model: {models}")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="output tokens per request (default 64)")


def stderr_progress(name: str, clock: Callable[[], float] = time.monotonic,
                    stream: TextIO | None = None) -> Progress:
    """Progress lines on stderr, each with the seconds since the benchmark began."""
    start = clock()

    def progress(message: str) -> None:
        print(f"[bench {name} +{clock() - start:5.1f}s] {message}",
              file=stream or sys.stderr, flush=True)

    return progress


def environment() -> dict[str, Any]:
    """What shapes the numbers on this machine; the load average shows a shared machine."""
    return {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": sys.version.split()[0], "unix_time": time.time()}


def exit_status(result: BenchResult, check: bool) -> int:
    """0 unless --check and a goal was missed (1) or not measured (3)."""
    if not check:
        return 0
    rows = result.goal_rows()
    if any(r["measured"] and not r["met"] for r in rows):
        return 1
    return 3 if any(not r["measured"] for r in rows) else 0


def report(result: BenchResult, out: TextIO) -> None:
    """Print the machine, the benchmark's tables and its goals."""
    if result.machine:
        print(f"machine: {one_line(result.machine)}", file=out)
        print(file=out)
    for table in (*result.tables, result.goals_table()):
        print(render_table(table), file=out)
        print(file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    env = result.environment
    if "load_average" in env and "load_average_after" in env:
        # the 1-minute load before the run shows other work on the machine; after it, the
        # figure includes the benchmark's own processes
        print(f"load: 1-minute load average {env['load_average'][0]:.2f} before the run, "
              f"{env['load_average_after'][0]:.2f} at its end", file=out)


def run_benchmark(bench: Benchmark, args: argparse.Namespace) -> int:
    """Measure, print, write the JSON if asked; return the exit status."""
    before = environment()
    result = bench.measure(args, stderr_progress(bench.name))
    # described after the run: torch's threads are known once the benchmark loaded it
    result = dataclasses.replace(result, machine=describe(), environment={
        **before, **result.environment, "load_average_after": list(os.getloadavg())})
    report(result, sys.stdout)
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json_path}", file=sys.stderr)
    return exit_status(result, args.check)
