"""Fault windows, recovery points and phases of a run, derived from its records.

Phases (DESIGN.md): baseline before the first fault; fault while one is active; recovery from a
revert (or from a kill, which has nothing to revert) until the service is back within its SLOs;
steady after that. Recovery is found with a sliding window over request start times: the
service recovered at the start of the first window that meets the SLOs and after which every
window with enough requests keeps meeting them, up to the next fault or the end of the run.

The window is sized from the run's own pace, so a slower machine (fewer requests a second) gets
longer windows rather than windows too thin to judge. With `rate` the counted requests sent
per second over the baseline phase (over the whole run when the baseline holds none):

    window = min(max(recovery.window, 2 * recovery.min_requests / rate), cap)
    cap    = max(recovery.window, run length / 2)
    step   = recovery.step * window / recovery.window

so a window is expected to hold twice the requests it needs. The SLOs the windows judge are
the run's resolved thresholds (thresholds.py): relative bounds in seconds of this run.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import PHASES, CheckConfig, RecoveryConfig
from .run import FaultOp, RequestRecord, RunData
from .stats import stats, tokens, violations
from .thresholds import Thresholds, resolve

__all__ = ["FaultWindow", "Recovery", "Timeline", "WindowResult", "Windowing", "build_timeline",
           "fault_windows", "size_windows"]

# Faults that leave nothing to revert: the target heals itself (a supervisor restarts the
# process), so recovery is timed from the fault itself, not from its no-op revert.
_SELF_HEALING = ("kill", "terminate", "restart")


@dataclass(frozen=True)
class FaultWindow:
    """One injected fault: from its inject to its revert (or the end of the run)."""

    inject_id: str
    fault: str
    start: float
    end: float
    reverted: bool
    self_healing: bool
    value: dict[str, Any]

    @property
    def recovery_from(self) -> float:
        return self.start if self.self_healing else self.end


@dataclass(frozen=True)
class WindowResult:
    """One sliding window: its start, request count, and whether it met the SLOs (None: too
    few requests to say)."""

    start: float
    requests: int
    met: bool | None
    why: tuple[str, ...] = ()


@dataclass(frozen=True)
class Windowing:
    """The recovery windows' effective length and step, and the request rate they came from
    (`rate_from`: baseline or run; rate None when no request was counted)."""

    window: float
    step: float
    rate: float | None
    rate_from: str
    configured_window: float
    capped: bool

    def to_json(self) -> dict[str, Any]:
        return {"window_s": self.window, "step_s": self.step, "rate_rps": self.rate,
                "rate_from": self.rate_from, "configured_window_s": self.configured_window,
                "capped": self.capped}


@dataclass(frozen=True)
class Recovery:
    """The service's way back after one fault, observed until `horizon`; `judged_requests`
    and `judged_tokens` are what the windows with enough requests rested on."""

    fault: FaultWindow
    start: float
    horizon: float
    recovered_at: float | None
    windows: tuple[WindowResult, ...]
    judged_requests: int = 0
    judged_tokens: int = 0

    @property
    def time_to_recover(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.start

    @property
    def end(self) -> float:
        return self.horizon if self.recovered_at is None else self.recovered_at


@dataclass(frozen=True)
class Timeline:
    """The run's span, its faults and recoveries, the thresholds and windows they were judged
    with; `phase(t)` names the phase at time t."""

    start: float
    end: float
    faults: tuple[FaultWindow, ...]
    recoveries: tuple[Recovery, ...]
    thresholds: Thresholds
    windowing: Windowing

    def phase(self, t: float) -> str:
        if any(f.start <= t < f.end for f in self.faults):
            return "fault"
        if any(r.start <= t < r.end for r in self.recoveries):
            return "recovery"
        if not self.faults or t < self.faults[0].start:
            return "baseline"
        return "steady"

    def segments(self) -> list[tuple[float, float, str]]:
        """The run cut at every boundary, each piece with its phase, adjacent ones joined."""
        cuts = {self.start, self.end}
        for f in self.faults:
            cuts |= {f.start, f.end}
        for r in self.recoveries:
            cuts |= {r.start, r.end}
        points = sorted(t for t in cuts if self.start <= t <= self.end)
        out: list[tuple[float, float, str]] = []
        for a, b in itertools.pairwise(points):
            if b <= a:
                continue
            phase = self.phase((a + b) / 2)
            if out and out[-1][2] == phase and out[-1][1] == a:
                out[-1] = (out[-1][0], b, phase)
            else:
                out.append((a, b, phase))
        return out

    def durations(self) -> dict[str, float]:
        totals = dict.fromkeys(PHASES, 0.0)
        for a, b, phase in self.segments():
            totals[phase] += b - a
        return totals

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start, "end": self.end,
            "faults": [{"inject": f.inject_id, "fault": f.fault, "start": f.start,
                        "end": f.end, "reverted": f.reverted, "self_healing": f.self_healing}
                       for f in self.faults],
            "recoveries": [{"inject": r.fault.inject_id, "start": r.start,
                            "horizon": r.horizon, "recovered_at": r.recovered_at,
                            "time_to_recover_s": r.time_to_recover,
                            "judged_requests": r.judged_requests,
                            "judged_tokens": r.judged_tokens}
                           for r in self.recoveries],
            "phases": [{"start": a, "end": b, "phase": p} for a, b, p in self.segments()],
            "thresholds": self.thresholds.to_json(),
            "windowing": self.windowing.to_json(),
        }


def _self_healing(fault: str, value: dict[str, Any]) -> bool:
    action = str(value.get("action", ""))
    return action in _SELF_HEALING or fault.rsplit("-", 1)[-1] in _SELF_HEALING


def fault_windows(ops: Sequence[FaultOp], run_end: float) -> tuple[FaultWindow, ...]:
    """Pair each inject with its revert by the inject id (`value.inject`)."""
    injects: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for i, op in enumerate(ops):
        key = str(op.value.get("inject", f"#{i}"))
        if op.f == "inject":
            entry = injects.setdefault(key, {"start": op.time, "ok": False, "failed": False,
                                             "value": {}, "end": None, "reverted": False})
            if key not in order:
                order.append(key)
            entry["start"] = min(entry["start"], op.time)
            if op.type == "ok":
                entry["ok"] = True
                entry["value"] = dict(op.value)
            elif op.type == "fail":
                entry["failed"] = True
                entry["value"] = entry["value"] or dict(op.value)
        elif op.f == "revert" and key in injects:
            entry = injects[key]
            entry["revert_seen"] = True
            if op.type == "ok":
                entry["end"], entry["reverted"] = op.time, True
            elif op.type == "fail" and entry["end"] is None:
                entry["revert_failed"] = True
    windows: list[FaultWindow] = []
    for key in order:
        e = injects[key]
        if e["failed"] and not e["ok"] and not e.get("revert_seen"):
            continue  # the inject failed and left nothing behind
        value = e["value"]
        fault = str(value.get("fault", "fault"))
        end = e["end"] if e["end"] is not None else max(run_end, e["start"])
        windows.append(FaultWindow(key, fault, e["start"], end, e["reverted"],
                                   _self_healing(fault, value), value))
    return tuple(sorted(windows, key=lambda w: w.start))


def size_windows(requests: Sequence[RequestRecord], start: float, end: float,
                 first_fault: float | None, rc: RecoveryConfig) -> Windowing:
    """The effective recovery window and step for a run (the rule in the module docstring)."""
    cut = end if first_fault is None else first_fault
    base = sum(1 for r in requests if r.counted and r.sent_at < cut)
    rate: float | None = None
    rate_from = "baseline"
    if base and cut > start:
        rate = base / (cut - start)
    else:
        rate_from = "run"
        counted = sum(1 for r in requests if r.counted)
        rate = counted / (end - start) if counted and end > start else None
    window, capped = rc.window, False
    if rate is not None:
        needed = 2 * rc.min_requests / rate
        cap = max(rc.window, (end - start) / 2)
        window = min(max(rc.window, needed), cap)
        capped = needed > cap
    return Windowing(window, rc.step * window / rc.window, rate, rate_from, rc.window, capped)


def _windows(requests: Sequence[RequestRecord], starts: list[float], begin: float, horizon: float,
             config: CheckConfig, sizing: Windowing, thresholds: Thresholds
             ) -> tuple[list[WindowResult], list[RequestRecord]]:
    """The windows from `begin` to `horizon`, and the requests the judged ones rested on."""
    minimum = config.recovery.min_requests
    slo = thresholds.slo
    out: list[WindowResult] = []
    judged: set[int] = set()
    t = begin
    while t < horizon:
        hi = min(t + sizing.window, horizon)
        lo_i, hi_i = bisect.bisect_left(starts, t), bisect.bisect_left(starts, hi)
        counted = [r for r in requests[lo_i:hi_i] if r.counted]
        if len(counted) < minimum:
            out.append(WindowResult(t, len(counted), None))
        else:
            judged.update(range(lo_i, hi_i))
            why = violations(stats(counted, hi - t, slo), slo, goodput=False)
            out.append(WindowResult(t, len(counted), not why, tuple(why)))
        t += sizing.step
    return out, [requests[i] for i in sorted(judged) if requests[i].counted]


def _recovered_at(windows: Sequence[WindowResult]) -> float | None:
    # the start of the last run of met windows (gaps without data allowed) reaching the end
    found: float | None = None
    for w in windows:
        if w.met is False:
            found = None
        elif w.met and found is None:
            found = w.start
    return found


def build_timeline(run: RunData, config: CheckConfig) -> Timeline:
    """The timeline of `run` judged with `config`'s service levels."""
    start, end = run.start, run.end
    faults = fault_windows(run.faults, end)
    requests = run.requests  # sorted by sent_at
    starts = [r.sent_at for r in requests]
    first_fault = faults[0].start if faults else None
    # the baseline ends at the first fault whatever the SLOs say: resolve them against it first
    baseline = requests[:bisect.bisect_left(starts, first_fault)] \
        if first_fault is not None else requests
    thresholds = resolve(baseline, config)
    sizing = size_windows(requests, start, end, first_fault, config.recovery)
    recoveries: list[Recovery] = []
    for i, fault in enumerate(faults):
        begin = fault.recovery_from
        nexts = [f.start for f in faults[i + 1:] if f.start >= begin]
        horizon = min([end, *nexts])
        windows, judged = _windows(requests, starts, begin, horizon, config, sizing,
                                   thresholds)
        recoveries.append(Recovery(fault, begin, horizon, _recovered_at(windows),
                                   tuple(windows), len(judged), tokens(judged)))
    return Timeline(start, end, faults, tuple(recoveries), thresholds, sizing)
