"""Run the checks (SLOs per phase, recovery, scaling, audit completeness, steady state) over a run
directory and write checks.json and the reports its experiment.yaml's report.formats names (all
when absent: summary.json, results.json, junit.xml, summary.md, report.html) into it. Exit 0 when
every check is valid, 1 when one is invalid, 3 when one is unknown, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..runner.rundir import CHECKS_CONFIG_FILE
from .config import load_config
from .run import load_run
from .runner import run_checks

__all__ = ["add_parser", "check_command"]


def check_command(run_dir: Path, config_path: Path | None, out_dir: Path | None,
                  out: TextIO | None = None, goodput: Mapping[str, float] | None = None) -> int:
    """Judge `run_dir`, write the reports, print progress (to stdout); the exit status."""
    out = out or sys.stdout
    # the reporter reads the checks, not the other way
    from ..report import FORMAT_FILES, print_verdicts

    if config_path is None and (run_dir / CHECKS_CONFIG_FILE).is_file():
        config_path = run_dir / CHECKS_CONFIG_FILE  # the config the run was made with
    config = load_config(config_path)
    if goodput:  # --goodput: the per-request bounds goodput is counted with
        request = config.slo.request.model_copy(update=dict(goodput))
        config = config.model_copy(update={"slo": config.slo.model_copy(
            update={"request": request})})
    run = load_run(run_dir)
    sources = [name for name, present in (
        ("telemetry", run.telemetry is not None), ("events", run.events is not None),
        ("audit log", bool(run.audit_paths)), ("probes", bool(run.probes))) if present]
    print(f"llm-chaos check: {run_dir}: {len(run.requests)} requests, "
          f"{sum(1 for f in run.faults if f.f == 'inject' and f.type == 'ok')} fault(s)"
          + (f", {', '.join(sources)}" if sources else "")
          + (f"; config {config_path}" if config_path else "; default config"), file=out)
    for name, count in run.skipped_lines.items():
        print(f"  skipped {count} unreadable line(s) of {name}", file=out)
    result = run_checks(run, config)
    if result.timeline_error:
        print(f"  timeline not built: {result.timeline_error}", file=out)
    # the formats the run was made with (experiment.yaml's report.formats), else every one
    report = run.experiment.get("report")
    formats = report.get("formats") if isinstance(report, Mapping) else None
    print_verdicts(result, out_dir or run_dir, out, formats or FORMAT_FILES)
    print(f"verdict: {result.verdict.value} (exit {result.exit_code})", file=out)
    return result.exit_code


def _run(args: argparse.Namespace) -> int:
    from ..report.results import parse_goodput

    return check_command(args.run_dir, args.config, args.out,
                         goodput=parse_goodput(args.goodput or ()))


def add_parser(sub: Any) -> None:
    """Register `check`."""
    p = sub.add_parser("check", description=__doc__,
                       help="re-judge a recorded run offline and write its reports")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a run directory (reports/<run-id>) holding history.jsonl")
    p.add_argument("--config", type=Path, metavar="PATH",
                   help="checks.yaml with slo:, recovery:, scaling:, memory:, checks: sections "
                        "(default: RUN_DIR/checks.yaml if present, else built-in defaults)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write the reports here instead of into RUN_DIR")
    from ..report.results import add_goodput

    add_goodput(p)
    p.set_defaults(run=_run)
