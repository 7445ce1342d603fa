"""The steady-state check (Chaos Toolkit's hypothesis): the probes that ran before the load and
faults passed, and the same probes passed again after them."""

from __future__ import annotations

from .result import CheckResult, Verdict
from .run import ProbeRecord, RunData
from .timeline import Timeline

__all__ = ["check_steady_state"]


def _when(p: ProbeRecord, timeline: Timeline) -> str:
    if p.when in ("before", "after"):
        return p.when
    first = timeline.faults[0].start if timeline.faults else None
    last = max((f.end for f in timeline.faults), default=None)
    if first is not None and p.time < first:
        return "before"
    if last is not None and p.time >= last:
        return "after"
    return "before" if p.time <= timeline.start else "after" if p.time >= timeline.end \
        else "during"


def _passed(p: ProbeRecord) -> bool | None:
    ok = p.value.get("ok", p.value.get("within_tolerance"))
    if isinstance(ok, bool):
        return ok and p.type != "fail"
    return {"ok": True, "fail": False}.get(p.type)


def check_steady_state(run: RunData, timeline: Timeline) -> CheckResult:
    """Valid when every probe passed before and after; invalid when one failed after only;
    unknown when there were none, or the system was not steady to begin with."""
    if not run.probes:
        return CheckResult("steady_state", Verdict.UNKNOWN,
                           "no steady-state probe records (`f: probe`) in history.jsonl")
    rows = [{"name": p.name, "when": _when(p, timeline), "time": p.time, "passed": _passed(p)}
            for p in run.probes]
    evidence = {"probes": rows}
    before = [r for r in rows if r["when"] == "before"]
    after = [r for r in rows if r["when"] == "after"]
    failed_after = [str(r["name"]) for r in after if r["passed"] is False]
    failed_before = [str(r["name"]) for r in before if r["passed"] is False]
    figures: dict[str, float | int | str | None] = {
        "before": len(before), "after": len(after), "failed_after": len(failed_after)}
    if failed_after and not failed_before:
        return CheckResult("steady_state", Verdict.INVALID,
                           "steady state not restored: " + ", ".join(failed_after) + " failed",
                           evidence, figures)
    if failed_before:
        return CheckResult("steady_state", Verdict.UNKNOWN,
                           "the system was not steady before the run: "
                           + ", ".join(failed_before) + " failed; nothing can be concluded",
                           evidence, figures)
    if not before or not after:
        missing = "before" if not before else "after"
        return CheckResult("steady_state", Verdict.UNKNOWN,
                           f"no steady-state probe ran {missing} the run", evidence, figures)
    if any(r["passed"] is None for r in before + after):
        return CheckResult("steady_state", Verdict.UNKNOWN,
                           "some probes have no outcome (type info)", evidence, figures)
    return CheckResult("steady_state", Verdict.VALID,
                       f"{len(before)} probe(s) before and {len(after)} after all passed",
                       evidence, figures)
