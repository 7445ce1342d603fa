"""`llm-chaos bench NAME`: benchmarks that print a table and, with --json, every figure."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register `bench` and its benchmarks."""
    p = sub.add_parser("bench", help="run a benchmark (engine, ...)",
                       description="Benchmarks: each prints a table of figures and goals.")
    bench_sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    del bench_sub
    p.set_defaults(run=_missing)


def _missing(args: argparse.Namespace) -> int:
    return 2
