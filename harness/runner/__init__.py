"""`llm-chaos run EXP.yaml`: one experiment end to end (validate, start the target, steady
state before, load with the fault schedule, always revert, steady state after, checks, report).

- `faults`: the experiment's fault specs as the injector's steps and abort conditions.
- `probes`: steady-state probes (HTTP status, a metric within bounds).
- `locust`: Locust as a headless subprocess, and when its load started.
- `capacity`: the target's capacity measured before the load, for `load.users: auto`.
- `rundir`: the run directory's schema (file names, the request line, the status vocabulary)
  and its writers, shared by `llm-chaos run`, Locust's `--chaos-plan` and the checks.
- `session`: one experiment's phases, which every entry point drives.
- `lifecycle`: the run itself (`run_experiment`); `cli`: the subcommand.

Nothing is imported here: `rundir` is the run directory's schema, which the load generator and
the checks both read, and importing it must not start the whole lifecycle.
"""

from __future__ import annotations

__all__: list[str] = []
