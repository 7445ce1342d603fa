"""The service-level check: per phase p50/p95/p99 of TTFT, ITL, TPOT and e2e, error rate and
goodput, judged in the phases the config names (baseline and steady by default)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .config import PHASES, CheckConfig
from .result import CheckResult, Verdict
from .run import RequestRecord, RunData
from .stats import LATENCIES, Stats, stats, violations
from .timeline import Timeline

__all__ = ["check_slo", "phase_stats"]


def phase_stats(run: RunData, timeline: Timeline, config: CheckConfig) -> dict[str, Stats]:
    """Every statistic per phase (a request belongs to the phase it was sent in)."""
    groups: dict[str, list[RequestRecord]] = {p: [] for p in PHASES}
    for r in run.requests:
        groups[timeline.phase(r.sent_at)].append(r)
    durations = timeline.durations()
    return {p: stats(groups[p], durations[p], timeline.thresholds.slo) for p in PHASES}


def _judged(per_phase: dict[str, Stats], phases: Sequence[str], minimum: int
            ) -> tuple[list[str], list[str]]:
    judged = [p for p in phases if per_phase[p].requests >= minimum]
    thin = [p for p in phases if 0 < per_phase[p].requests < minimum]
    return judged, thin


def _rests_on(phase: str, s: Stats) -> str:
    return f"{phase} ({s.requests} requests, {s.tokens} tokens)"


def check_slo(run: RunData, timeline: Timeline, config: CheckConfig) -> CheckResult:
    """Valid when every judged phase meets every configured SLO; unknown without data or when
    a relative bound could not be resolved against the baseline phase."""
    written = config.slo
    slo = timeline.thresholds.slo  # relative bounds in seconds of this run
    per_phase = phase_stats(run, timeline, config)
    judged, thin = _judged(per_phase, written.judge_phases, written.min_requests)
    breaches = {p: violations(per_phase[p], slo) for p in judged}
    unresolved = timeline.thresholds.percentiles_unresolved()
    deviations = Counter(d for r in run.requests if r.counted for d in r.deviations)
    evidence = {"phases": {p: s.to_json() for p, s in per_phase.items()},
                "judged_phases": judged, "too_few_requests": thin,
                "violations": {p: v for p, v in breaches.items() if v},
                "token_count_sources": sorted({r.output_tokens_source or "none"
                                               for r in run.requests if r.ok}),
                "thresholds": written.model_dump(mode="json"),
                "thresholds_resolved": {k: v for k, v in timeline.thresholds.resolved.items()
                                        if k in LATENCIES},
                "thresholds_unresolved": unresolved,
                # answers that counted as completed but were odd (no [DONE], no text, ...)
                "deviations": dict(sorted(deviations.items()))}
    figures: dict[str, float | int | str | None] = {}
    for p in judged:
        s = per_phase[p]
        figures[f"{p}_requests"] = s.requests
        figures[f"{p}_ttft_p95_s"] = s.latency["ttft"]["p95"]
        figures[f"{p}_error_rate"] = s.error_rate
        figures[f"{p}_goodput_rps"] = s.goodput
    figures["empty_responses"] = deviations["empty_response"]
    not_resolved = ("; not resolved: " + "; ".join(unresolved)) if unresolved else ""
    broken = [f"{_rests_on(p, per_phase[p])}: {'; '.join(v)}" for p, v in breaches.items() if v]
    if broken:
        return CheckResult("slo", Verdict.INVALID, "SLO missed in " + " | ".join(broken),
                           evidence, figures)
    if not judged:
        counts = ", ".join(f"{p} {per_phase[p].requests}" for p in written.judge_phases)
        return CheckResult("slo", Verdict.UNKNOWN,
                           f"no judged phase ({', '.join(written.judge_phases)}) has "
                           f"{written.min_requests} or more requests ({counts})"
                           + not_resolved, evidence, figures)
    met = ", ".join(_rests_on(p, per_phase[p]) for p in judged)
    if unresolved:
        return CheckResult("slo", Verdict.UNKNOWN,
                           "relative SLO bound(s) not resolved against the baseline: "
                           + "; ".join(unresolved) + f" (the others met in {met})",
                           evidence, figures)
    return CheckResult("slo", Verdict.VALID, f"all SLOs met in {met}", evidence, figures)
