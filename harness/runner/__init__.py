"""`llm-chaos run EXP.yaml`: one experiment end to end (validate, start the target, steady
state before, load with the fault schedule, always revert, steady state after, checks, report).

- `faults`: the experiment's fault specs as the injector's steps and abort conditions.
- `probes`: steady-state probes (HTTP status, a metric within bounds).
- `locust`: Locust as a headless subprocess, and when its load started.
- `capacity`: the target's capacity measured before the load, for `load.users: auto`.
- `rundir`: the run directory's path, the target's events and the harness's lines in the
  history, written the same way by `llm-chaos run` and Locust's `--chaos-plan`.
- `lifecycle`: the run itself; `cli`: the subcommand.
"""

from __future__ import annotations

from .cli import add_parser
from .lifecycle import RunOutcome, run_experiment

__all__ = ["RunOutcome", "add_parser", "run_experiment"]
