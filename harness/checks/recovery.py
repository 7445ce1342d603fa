"""The recovery check: per fault, the time to recover, the error budget it burnt, and what
happened to the streams in flight when it struck (a stream cut silently is always invalid).
Each fault's line says what it rests on: the requests and tokens of the judged windows after
the fault, and the window length sized from the run's request rate (timeline.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import CheckConfig
from .result import CheckResult, Verdict, merge
from .run import SILENT_CUT, RequestRecord, RunData
from .timeline import Recovery, Timeline

__all__ = ["check_recovery", "stream_fate"]

_ERROR_ENDINGS = frozenset({"error_frame", "http_error", "rate_limited", "connect_error",
                            "bad_content_type", "malformed_stream"})


def stream_fate(r: RequestRecord) -> str:
    """completed / failed_with_error / cut_silently / timed_out / interrupted."""
    if r.ok:
        return "completed"
    if r.status in SILENT_CUT:
        return "cut_silently"
    if r.status in _ERROR_ENDINGS:
        return "failed_with_error"
    if r.status == "interrupted":
        return "interrupted"
    return "timed_out"


def _in_flight(requests: Sequence[RequestRecord], t: float) -> list[RequestRecord]:
    return [r for r in requests if r.sent_at < t < r.end]


def _one(rec: Recovery, run: RunData, timeline: Timeline, config: CheckConfig,
         budget: float | None) -> tuple[Verdict, dict[str, Any], list[str]]:
    fault = rec.fault
    rc = config.recovery
    sizing = timeline.windowing
    max_time = timeline.thresholds.max_time
    at_fault = {r.request_id: r for r in _in_flight(run.requests, fault.start)}
    if not fault.self_healing:
        at_fault.update({r.request_id: r for r in _in_flight(run.requests, fault.end)})
    fates: dict[str, int] = {}
    for r in at_fault.values():
        fates[stream_fate(r)] = fates.get(stream_fate(r), 0) + 1
    # every request overlapping the fault and its recovery: silent cuts and the budget burnt.
    # Until the fault's end too: a kill may be judged recovered at its very start, yet cut
    # the streams sent while its inject was under way (0.47 s once, on a busy machine)
    until = max(rec.end, fault.end)
    touched = [r for r in run.requests if r.end > fault.start and r.sent_at < until]
    cut = sorted({r.request_id for r in touched if r.status in SILENT_CUT})
    failed = sum(1 for r in touched if r.counted and not r.ok)
    burn = None if not budget else failed / budget
    ttr = rec.time_to_recover
    evidence: dict[str, Any] = {
        "inject": fault.inject_id, "fault": fault.fault, "start": fault.start,
        "end": fault.end, "reverted": fault.reverted, "timed_from": rec.start,
        "timed_from_kind": "fault" if fault.self_healing else "revert",
        "horizon": rec.horizon, "recovered_at": rec.recovered_at, "time_to_recover_s": ttr,
        "in_flight": fates, "cut_silently": cut[:50], "cut_silently_count": len(cut),
        "failed_requests": failed, "error_budget_burnt": burn,
        "judged_requests": rec.judged_requests, "judged_tokens": rec.judged_tokens,
        "window_s": sizing.window, "step_s": sizing.step, "max_time_s": max_time,
        "unmet_windows": [{"start": w.start, "requests": w.requests, "why": list(w.why)}
                          for w in rec.windows if w.met is False][:20],
    }
    verdicts: list[Verdict] = []
    words: list[str] = []
    if cut:
        verdicts.append(Verdict.INVALID)
        words.append(f"{len(cut)} stream(s) cut silently")
    if not fault.reverted and not fault.self_healing:
        verdicts.append(Verdict.UNKNOWN)
        words.append("never reverted")
    if ttr is None:
        observed = rec.horizon - rec.start
        enough = max_time is not None and observed >= max_time + sizing.window
        has_data = any(w.met is not None for w in rec.windows)
        if enough and has_data:
            verdicts.append(Verdict.INVALID)
            words.append(f"did not recover within {observed:.1f}s")
        else:
            verdicts.append(Verdict.UNKNOWN)
            sent = sum(1 for r in run.requests
                       if r.counted and rec.start <= r.sent_at < rec.horizon)
            words.append(f"recovery not seen in {observed:.1f}s of observation"
                         + ("" if has_data else
                            f" (no {sizing.window:.3g}s window had {rc.min_requests} requests;"
                            f" {sent} sent in all)"))
    elif max_time is not None and ttr > max_time:
        verdicts.append(Verdict.INVALID)
        words.append(f"recovered after {ttr:.2f}s > {max_time:.3g}s")
    else:
        words.append(f"recovered in {ttr:.2f}s")
    words[-1] += (f" (judged on {rec.judged_requests} requests, {rec.judged_tokens} tokens;"
                  f" window {sizing.window:.3g}s)")
    unresolved = timeline.thresholds.percentiles_unresolved()
    if unresolved or (rc.max_time is not None and max_time is None):
        # judged without a bound it should have had: a recovery seen so may be none at all
        verdicts.append(Verdict.UNKNOWN)
        words.append("relative bound(s) not resolved against the baseline")
    if burn is not None and rc.max_budget_burn is not None and burn > rc.max_budget_burn:
        verdicts.append(Verdict.INVALID)
        words.append(f"burnt {burn:.0%} of the error budget > {rc.max_budget_burn:.0%}")
    return merge(verdicts), evidence, words


def check_recovery(run: RunData, timeline: Timeline, config: CheckConfig) -> CheckResult:
    """Valid when every fault was recovered from in time, with no stream cut silently."""
    if not timeline.recoveries:
        return CheckResult("recovery", Verdict.UNKNOWN,
                           "no fault was injected in this run: nothing to recover from",
                           {"faults": []})
    rate = config.slo.error_rate
    counted = sum(1 for r in run.requests if r.counted)
    budget = rate * counted if rate else None
    verdicts: list[Verdict] = []
    faults: list[dict[str, Any]] = []
    lines: list[str] = []
    for rec in timeline.recoveries:
        verdict, evidence, words = _one(rec, run, timeline, config, budget)
        verdicts.append(verdict)
        faults.append({"verdict": verdict.value, **evidence})
        lines.append(f"{rec.fault.fault}: {', '.join(words)}")
    ttrs = [r.time_to_recover for r in timeline.recoveries if r.time_to_recover is not None]
    figures: dict[str, float | int | str | None] = {
        "faults": len(timeline.recoveries),
        "max_time_to_recover_s": max(ttrs) if ttrs else None,
        "cut_silently": sum(int(f["cut_silently_count"]) for f in faults),
        "judged_requests": sum(r.judged_requests for r in timeline.recoveries),
        "window_s": timeline.windowing.window,
        "rate_rps": timeline.windowing.rate,
    }
    return CheckResult("recovery", merge(verdicts), "; ".join(lines),
                       {"error_budget_requests": budget, "faults": faults,
                        "windowing": timeline.windowing.to_json(),
                        "thresholds_resolved": dict(timeline.thresholds.resolved),
                        "thresholds_unresolved": dict(timeline.thresholds.unresolved)},
                       figures)
