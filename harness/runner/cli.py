"""Run an experiment file end to end: validate it, start the reference target when it names one,
probe the steady state, run Locust with the fault schedule (every fault reverted however the run
ends), probe again, judge the run and write its reports into reports/<run-id>/. Exit 0 when every
check is valid, 1 when one is invalid, 3 when one is unknown or the run could not complete, 2 on
a bad experiment file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..faults.injector import exit_143_when_terminated

__all__ = ["add_parser"]


def _run(args: argparse.Namespace) -> int:
    from ..report.results import parse_goodput
    from .lifecycle import run_experiment

    # vLLM's --goodput bounds are the per-request SLO the checks count goodput with
    overrides = [*(args.set or ()), *(f"checks.slo.request.{key}={seconds:g}" for key, seconds
                                      in parse_goodput(args.goodput or ()).items())]
    ui = _ui_address(args.ui) if args.ui is not None else None
    return exit_143_when_terminated("run", lambda: run_experiment(
        args.experiment, overrides, report_dir=args.report_dir, ui=ui,
        ui_linger=args.ui_linger).exit_code)


def _ui_address(value: str) -> tuple[str, int]:
    """`--ui [HOST:]PORT` as (host, port); UsageError when it is not one."""
    from ..errors import UsageError

    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ui: {value!r} is not [HOST:]PORT, e.g. 127.0.0.1:8089")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_parser(sub: Any) -> None:
    """Register `run`."""
    p = sub.add_parser("run", description=__doc__,
                       help="run an experiment: target, steady state, load + faults, checks, "
                            "report")
    p.add_argument("experiment", type=Path, metavar="EXP.yaml", help="the experiment file")
    p.add_argument("--report-dir", type=Path, default=None, metavar="DIR",
                   help="put the run directory under DIR (default: the experiment's "
                        "report.dir, reports/)")
    p.add_argument("--set", action="append", default=None, metavar="PATH=VALUE",
                   help="override a field of the experiment, e.g. --set target.model=sim "
                        "(repeatable)")
    from ..report.results import add_goodput

    add_goodput(p)
    p.add_argument("--ui", nargs="?", const="127.0.0.1:8089", default=None,
                   metavar="[HOST:]PORT",
                   help="run with Locust's web UI and the game-day console (its Chaos tab) "
                        "instead of headless, at HOST:PORT (default 127.0.0.1:8089); faults "
                        "can be injected and reverted there by hand")
    p.add_argument("--ui-linger", type=float, default=60.0, metavar="SECONDS",
                   help="with --ui: keep the console open this long after the end, for the "
                        "verdicts and report.html (60)")
    p.set_defaults(run=_run)
