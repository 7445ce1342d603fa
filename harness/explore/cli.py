"""Property-based chaos: Hypothesis draws fault schedules (kinds, times relative to the load's
start, overlaps, victims) for the experiment and runs each as a short `llm-chaos run` against the
reference target (use the simulated engine, --set target.model=sim, so an example takes seconds);
the experiment's checks are the invariants. A schedule that breaks one is shrunk to the smallest
that still breaks it, written as minimal.yaml (with the seed), which `llm-chaos run` replays.
Exit 0 when no schedule broke a check, 1 when one did, 2 on a bad experiment file.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..experiment import FAULT_KINDS
from ..faults.injector import exit_143_when_terminated

__all__ = ["add_parser"]


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS or k.startswith("container-")]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind {unknown[0] if unknown else text!r}; use a comma-separated "
            f"list of {', '.join(k for k in FAULT_KINDS if not k.startswith('container-'))}")
    return kinds


def _run(args: argparse.Namespace) -> int:
    from .search import ExploreSettings, explore

    config = ExploreSettings(max_examples=args.max_examples, seed=args.seed,
                             budget=args.budget, max_shrinks=args.max_shrinks,
                             max_faults=args.max_faults,
                             vary_load=args.vary_load)
    if args.kinds is not None:
        config = dataclasses.replace(config, kinds=args.kinds)
    return exit_143_when_terminated("explore", lambda: explore(
        args.experiment, args.set or (), config, out_dir=args.out).exit_code)


def add_parser(sub: Any) -> None:
    """Register `explore`."""
    p = sub.add_parser("explore", description=__doc__,
                       help="search fault schedules with Hypothesis and shrink a failing one")
    p.add_argument("experiment", type=Path, metavar="EXP.yaml",
                   help="the base experiment (target, load, checks); its faults are replaced")
    p.add_argument("--max-examples", type=int, default=10, metavar="N",
                   help="schedules to try before giving up (default 10; shrinking runs more)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the search and of every run (default 0): the same seed "
                        "draws the same schedules")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="start no new example after this many seconds (search and shrinking "
                        "together); default: no limit")
    p.add_argument("--max-shrinks", type=int, default=None, metavar="N",
                   help="runs to spend shrinking a failing schedule at most (default: no "
                        "limit); unlike --budget, the same on a fast or a slow machine")
    p.add_argument("--max-faults", type=int, default=3, metavar="K",
                   help="faults per schedule at most (default 3)")
    # (the default, harness.strategies.SCHEDULE_KINDS, is not imported here: Hypothesis
    # would load with every `llm-chaos` command)
    p.add_argument("--kinds", type=_kinds, default=None, metavar="KIND,...",
                   help="fault kinds to draw (default process-pause,process-kill,"
                        "process-terminate)")
    p.add_argument("--vary-load", action="store_true",
                   help="draw the load profile too (users, shape, arrivals)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="the search directory (default: reports/explore-<time>-<name>-<seed>)")
    p.add_argument("--set", action="append", default=None, metavar="PATH=VALUE",
                   help="override a field of the experiment, e.g. --set target.model=sim "
                        "(repeatable)")
    p.set_defaults(run=_run)
