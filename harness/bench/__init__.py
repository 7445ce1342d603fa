"""`llm-chaos bench NAME`: benchmarks that print a table and, with --json, every figure.

A benchmark is a `Benchmark` (its options and a `measure` function returning a `BenchResult`);
adding one is a module with a `BENCHMARK` and a line in `_benchmarks()`.
"""

from __future__ import annotations

import functools
from typing import Any

from .result import BenchResult, Figure, Goal, Table
from .runner import Benchmark, Progress, add_common_arguments, run_benchmark

__all__ = ["BenchResult", "Benchmark", "Figure", "Goal", "Progress", "Table", "add_parser"]


def _benchmarks() -> list[Benchmark]:
    from .audit import BENCHMARK as audit
    from .client import BENCHMARK as client
    from .cores import BENCHMARK as cores
    from .engine import BENCHMARK as engine
    from .formats import BENCHMARK as formats
    from .proxy import BENCHMARK as proxy
    from .router import BENCHMARK as router

    return [engine, formats, cores, router, client, proxy, audit]


def add_parser(sub: Any) -> None:
    """Register `bench` and its benchmarks."""
    p = sub.add_parser("bench", help="run a benchmark (engine, ...)",
                       description="Benchmarks: each prints a table of figures and goals. "
                                   "Exit status 0 when it ran, goals met or not; with --check, "
                                   "1 when a goal was missed, 3 when one was not measured.")
    bench_sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for bench in _benchmarks():
        bp = bench_sub.add_parser(bench.name, help=bench.help, description=bench.description)
        bench.add_arguments(bp)
        add_common_arguments(bp)
        bp.set_defaults(run=functools.partial(run_benchmark, bench))
