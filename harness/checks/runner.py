"""Run the configured checks over a recorded run; a check that crashes is `unknown`."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .audit import check_audit
from .config import CheckConfig
from .memory import check_memory
from .recovery import check_recovery
from .result import CheckResult, Verdict, merge
from .run import RunData
from .scaling import check_scaling
from .slo import check_slo, phase_stats
from .stats import Stats
from .steady import check_steady_state
from .timeline import Timeline, build_timeline

__all__ = ["CHECKS", "Check", "CheckRun", "Context", "exit_code", "run_checks", "safely"]


@dataclass(frozen=True)
class Context:
    """What a check may read: the run, its timeline (None if it could not be built), config."""

    run: RunData
    timeline: Timeline | None
    config: CheckConfig

    def need_timeline(self) -> Timeline:
        if self.timeline is None:
            raise RuntimeError("the run's timeline could not be built (see the timeline error)")
        return self.timeline


class Check(Protocol):
    """A pure function of the recorded run."""

    def __call__(self, ctx: Context) -> CheckResult:
        ...


CHECKS: Mapping[str, Check] = {
    "slo": lambda c: check_slo(c.run, c.need_timeline(), c.config),
    "recovery": lambda c: check_recovery(c.run, c.need_timeline(), c.config),
    "scaling": lambda c: check_scaling(c.run, c.config),
    "audit": lambda c: check_audit(c.run),
    "steady_state": lambda c: check_steady_state(c.run, c.need_timeline()),
    "memory": lambda c: check_memory(c.run, c.config),
}


def safely(name: str, check: Callable[[Context], CheckResult], ctx: Context) -> CheckResult:
    """`check(ctx)`, or `unknown` with the error when it raises: a crash is never a pass."""
    try:
        return check(ctx)
    except Exception as exc:  # any bug in a check must land in the report, not abort it
        return CheckResult(name, Verdict.UNKNOWN,
                           f"the check crashed: {type(exc).__name__}: {exc}",
                           {"error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(limit=8)})


@dataclass(frozen=True)
class CheckRun:
    """The verdicts of one run, with the timeline and per-phase statistics they rest on."""

    run: RunData
    config: CheckConfig
    results: tuple[CheckResult, ...]
    timeline: Timeline | None
    phases: Mapping[str, Stats] = field(default_factory=dict)
    timeline_error: str | None = None

    @property
    def verdict(self) -> Verdict:
        return merge(r.verdict for r in self.results)

    @property
    def exit_code(self) -> int:
        return exit_code(self.verdict)

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run.path), "seed": self.run.seed,
                "verdict": self.verdict.value, "exit_code": self.exit_code,
                "config": self.config.model_dump(mode="json"),
                "timeline": None if self.timeline is None else self.timeline.to_json(),
                "timeline_error": self.timeline_error,
                "phases": {p: s.to_json() for p, s in self.phases.items()},
                "skipped_lines": dict(self.run.skipped_lines),
                "checks": [r.to_json() for r in self.results]}


def exit_code(verdict: Verdict) -> int:
    """0 valid, 1 invalid, 3 unknown (2 is bad input, raised before any check runs)."""
    return {Verdict.VALID: 0, Verdict.INVALID: 1, Verdict.UNKNOWN: 3}[verdict]


def run_checks(run: RunData, config: CheckConfig,
               checks: Mapping[str, Check] | None = None) -> CheckRun:
    """Judge `run` with every check the config enables (in the config's order)."""
    table = CHECKS if checks is None else checks
    timeline: Timeline | None = None
    error: str | None = None
    phases: dict[str, Stats] = {}
    try:
        timeline = build_timeline(run, config)
        phases = phase_stats(run, timeline, config)
    except Exception as exc:  # the checks that need it say so; the rest still run
        error = f"{type(exc).__name__}: {exc}"
    ctx = Context(run, timeline, config)
    names = [n for n in config.checks if n in table] if checks is None else list(table)
    results = tuple(safely(n, table[n], ctx) for n in names)
    return CheckRun(run, config, results, timeline, phases, error)
