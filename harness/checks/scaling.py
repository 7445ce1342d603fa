"""The scaling check: once ongoing requests per worker exceed the target the fleet grows within
`up_within` seconds; once they drop it shrinks within `down_within` (Ray Serve's rule: desired
workers = ceil(ongoing / target), between floor and ceiling).

Load is the target's own `ongoing` count from telemetry when sampled, else the requests in
flight in the history; worker counts come from telemetry, else from registry events.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import CheckConfig, ScalingConfig
from .result import CheckResult, Verdict, merge
from .run import RunData

__all__ = ["check_scaling", "in_flight_series", "worker_series"]

Series = list[tuple[float, int]]  # step function: value from each time on


def _at(series: Series, t: float) -> int | None:
    i = bisect.bisect_right([s[0] for s in series], t) - 1
    return None if i < 0 else series[i][1]


def in_flight_series(run: RunData) -> Callable[[float], int]:
    """Requests in flight at time t, as the client saw them."""
    sent = sorted(r.sent_at for r in run.requests)
    ended = sorted(r.end for r in run.requests)
    return lambda t: bisect.bisect_right(sent, t) - bisect.bisect_right(ended, t)


def worker_series(run: RunData) -> tuple[Series, str] | None:
    """Worker count over time and where it came from; None when the run has neither source."""
    if run.telemetry:
        counted = [(s.time, s.workers) for s in run.telemetry if s.workers is not None]
        if counted:
            return [(t, int(w)) for t, w in counted], "telemetry"
    if run.events:
        alive: set[str] = set()
        series: Series = []
        for e in run.events:
            kind, worker = e.get("type"), str(e.get("worker", ""))
            if kind in ("registered", "spawned"):
                alive.add(worker)
            elif kind in ("deregistered", "removed"):
                alive.discard(worker)
            else:
                continue
            series.append((float(e["time"]), len(alive)))
        if series:
            return series, "events"
    return None


def _moves(series: Series, events: Sequence[Mapping[str, Any]] | None, kind: str) -> list[float]:
    sign = 1 if kind == "scale_up" else -1
    times = [t for (_, a), (t, b) in itertools.pairwise(series)
             if (b - a) * sign > 0]
    times += [float(e["time"]) for e in events or () if e.get("type") == kind]
    return sorted(times)


@dataclass(frozen=True)
class _Episode:
    direction: str
    start: float
    end: float
    deadline: float
    answered_at: float | None
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "start": self.start, "end": self.end,
                "deadline": self.deadline, "answered_at": self.answered_at,
                "verdict": self.verdict.value}


def _episodes(grid: list[tuple[float, int, int]], sc: ScalingConfig,
              ups: list[float], downs: list[float]) -> list[_Episode]:
    out: list[_Episode] = []
    for direction, within, moves in (("up", sc.up_within, ups), ("down", sc.down_within, downs)):
        start: float | None = None
        for i, (t, workers, desired) in enumerate(grid):
            need = desired > workers if direction == "up" else desired < workers
            last = i == len(grid) - 1
            if need and start is None:
                start = t
            if start is not None and (not need or last):
                end = t
                if end - start >= sc.sustain:
                    deadline = start + within
                    j = bisect.bisect_left(moves, start)
                    answered = moves[j] if j < len(moves) and moves[j] <= deadline else None
                    if answered is not None:
                        verdict = Verdict.VALID
                    elif end >= deadline:
                        verdict = Verdict.INVALID
                    else:
                        verdict = Verdict.UNKNOWN  # the load changed (or the run ended) first
                    out.append(_Episode(direction, start, end, deadline, answered, verdict))
                start = None
    return sorted(out, key=lambda e: e.start)


def check_scaling(run: RunData, config: CheckConfig) -> CheckResult:
    """Valid when every sustained over- or under-load was answered in time."""
    sc = config.scaling
    if sc is None:
        return CheckResult("scaling", Verdict.UNKNOWN,
                           "no `scaling:` section in the check config (target_ongoing, "
                           "up_within, down_within)")
    found = worker_series(run)
    if found is None:
        return CheckResult("scaling", Verdict.UNKNOWN,
                           "no worker counts: the run has no telemetry.jsonl or events.jsonl")
    series, source = found
    sampled = [s for s in run.telemetry or () if s.ongoing is not None]
    load: Callable[[float], int]
    if sampled:
        load_series: Series = [(s.time, int(s.ongoing or 0)) for s in sampled]
        load = lambda t: _at(load_series, t) or 0  # noqa: E731
        load_source = "telemetry"
    else:
        load = in_flight_series(run)
        load_source = "history"
    grid: list[tuple[float, int, int]] = []
    t = max(run.start, series[0][0])
    while t <= run.end:
        workers = _at(series, t)
        if workers is not None:
            want = math.ceil(load(t) / sc.target_ongoing)
            want = max(sc.floor, want if sc.ceiling is None else min(sc.ceiling, want))
            grid.append((t, workers, want))
        t += sc.step
    episodes = _episodes(grid, sc, _moves(series, run.events, "scale_up"),
                         _moves(series, run.events, "scale_down"))
    evidence = {"worker_source": source, "load_source": load_source,
                "episodes": [e.to_json() for e in episodes],
                "workers_min": min(w for _, w in series), "workers_max": max(w for _, w in series)}
    figures: dict[str, float | int | str | None] = {
        "scale_ups_needed": sum(1 for e in episodes if e.direction == "up"),
        "scale_downs_needed": sum(1 for e in episodes if e.direction == "down"),
        "missed": sum(1 for e in episodes if e.verdict is Verdict.INVALID),
    }
    if not episodes:
        return CheckResult("scaling", Verdict.UNKNOWN,
                           "load never called for a scale-up or scale-down: not exercised",
                           evidence, figures)
    verdict = merge(e.verdict for e in episodes)
    missed = [e for e in episodes if e.verdict is Verdict.INVALID]
    if missed:
        summary = "; ".join(f"scale-{e.direction} needed from t+{e.start - run.start:.1f}s "
                            f"not done within {e.deadline - e.start:g}s" for e in missed[:5])
    elif verdict is Verdict.UNKNOWN:
        summary = "some load changes ended before the autoscaler was due: inconclusive"
    else:
        summary = (f"{len(episodes)} scaling need(s) answered in time "
                   f"(workers {evidence['workers_min']}..{evidence['workers_max']})")
    return CheckResult("scaling", verdict, summary, evidence, figures)
