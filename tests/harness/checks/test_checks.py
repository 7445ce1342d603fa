"""The checks over small synthetic run directories: valid, invalid and unknown for each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.checks import (
    CheckConfig,
    CheckResult,
    Context,
    Verdict,
    load_config,
    load_run,
    merge,
    run_checks,
)
from harness.checks.audit import check_audit
from harness.checks.recovery import check_recovery
from harness.checks.scaling import check_scaling
from harness.checks.slo import check_slo
from harness.checks.steady import check_steady_state
from harness.checks.timeline import build_timeline
from harness.errors import UsageError

from .rundir import T0, RunBuilder


def config(**data: Any) -> CheckConfig:
    return CheckConfig.model_validate(data)


SLO = {"ttft": {"p95": 0.5}, "error_rate": 0.05, "request": {"ttft": 0.5}}


def judge(b: RunBuilder, name: str, cfg: CheckConfig | None = None) -> CheckResult:
    run = load_run(b.write())
    cfg = cfg or config(slo=SLO)
    timeline = build_timeline(run, cfg)
    if name == "slo":
        return check_slo(run, timeline, cfg)
    if name == "recovery":
        return check_recovery(run, timeline, cfg)
    if name == "scaling":
        return check_scaling(run, cfg)
    if name == "audit":
        return check_audit(run)
    return check_steady_state(run, timeline)


def test_merge_invalid_beats_unknown_beats_valid() -> None:
    assert merge([]) is Verdict.VALID
    assert merge([Verdict.VALID, Verdict.UNKNOWN]) is Verdict.UNKNOWN
    assert merge([Verdict.UNKNOWN, Verdict.INVALID, Verdict.VALID]) is Verdict.INVALID


# -- SLOs per phase ---------------------------------------------------------------------------

def test_slo_valid_when_every_judged_phase_meets_them(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 10, rate=5)
    result = judge(b, "slo")
    assert result.verdict is Verdict.VALID, result.summary
    baseline = result.evidence["phases"]["baseline"]
    assert baseline["requests"] == 50 and baseline["error_rate"] == 0
    assert baseline["latency_s"]["ttft"]["p95"] == pytest.approx(0.05)
    assert baseline["goodput_rps"] == pytest.approx(50 / baseline["duration_s"])


def test_slo_counts_odd_but_completed_answers(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 10, rate=5)
    for line, odd in zip(b.history[:7], ["empty_response"] * 4 + ["no_done"] * 3, strict=True):
        line["value"]["deviations"] = [odd]
    result = judge(b, "slo")
    assert result.evidence["deviations"] == {"empty_response": 4, "no_done": 3}
    assert result.figures["empty_responses"] == 4


def test_slo_invalid_when_ttft_p95_is_over_its_bound(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 5, rate=5)
    b.load(5, 10, rate=5, ttft=2.0)
    result = judge(b, "slo")
    assert result.verdict is Verdict.INVALID
    assert "ttft p95" in result.summary and "baseline" in result.summary
    # half the requests miss the per-request TTFT bound: goodput counts only the others
    assert result.evidence["phases"]["baseline"]["good"] == 25


def test_slo_unknown_without_enough_requests(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 1, rate=2)
    result = judge(b, "slo")
    assert result.verdict is Verdict.UNKNOWN
    assert result.evidence["too_few_requests"] == ["baseline"]


def test_phases_come_from_inject_revert_and_recovery(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 10, rate=10)
    b.load(10, 15, rate=10, status="error_frame")
    b.load(15, 18, rate=10, ttft=3.0)  # still slow after the revert: recovering
    b.load(18, 30, rate=10)
    b.fault(10, 15)
    run = load_run(b.write())
    timeline = build_timeline(run, config(slo=SLO, recovery={"window": 2, "step": 0.5}))
    assert timeline.phase(T0 + 5) == "baseline"
    assert timeline.phase(T0 + 12) == "fault"
    assert timeline.phase(T0 + 16) == "recovery"
    assert timeline.phase(T0 + 25) == "steady"
    recovered = timeline.recoveries[0].recovered_at
    assert recovered is not None and 17.5 <= recovered - T0 <= 18.5
    result = check_slo(run, timeline, config(slo=SLO))
    assert result.verdict is Verdict.VALID, result.summary  # baseline and steady are fine
    assert result.evidence["phases"]["fault"]["error_rate"] == 1.0


# -- recovery ---------------------------------------------------------------------------------

def test_recovery_valid_after_a_revert(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load_around_fault(0, 10, 15, 30, rate=10)
    result = judge(b, "recovery", config(slo=SLO, recovery={"window": 2, "max_time": 5}))
    assert result.verdict is Verdict.VALID, result.summary
    fault = result.evidence["faults"][0]
    assert fault["time_to_recover_s"] == pytest.approx(0.0, abs=0.6)
    assert fault["timed_from_kind"] == "revert"
    assert fault["failed_requests"] == 50
    assert fault["error_budget_burnt"] == pytest.approx(50 / (0.05 * 300))


def test_a_kill_burns_the_budget_of_requests_it_fails_after_an_instant_recovery(
        tmp_path: Path) -> None:
    """A kill the target recovers from at once still burns the budget of the streams it cut,
    also those sent after the inject began (on a busy machine a kill's inject took 0.47 s
    and the streams sent meanwhile died with the worker): they count until the fault's end."""
    b = RunBuilder(tmp_path)
    b.load(0, 30, rate=40)
    for at in (10.2, 10.25, 10.3):  # sent after the inject began, cut when it landed
        b.request(at, status="error_frame", duration=0.2)
    b.fault(10, 13, name="process-kill", action="kill")
    cfg = config(slo=SLO, recovery={"window": 2, "max_time": 5, "max_budget_burn": 0.02})
    result = judge(b, "recovery", cfg)
    fault = result.evidence["faults"][0]
    assert fault["time_to_recover_s"] == 0.0  # 3 of ~80 a window: within the error rate
    assert fault["failed_requests"] == 3
    assert result.verdict is Verdict.INVALID, result.summary
    assert "of the error budget" in result.summary


def test_recovery_invalid_when_errors_go_on_after_the_revert(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 10, rate=10)
    b.load(10, 30, rate=10, status="http_error")
    b.fault(10, 15)
    result = judge(b, "recovery", config(slo=SLO, recovery={"window": 2, "max_time": 5}))
    assert result.verdict is Verdict.INVALID
    assert "did not recover" in result.summary


def test_recovery_invalid_when_slower_than_max_time(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 10, rate=10)
    b.load(10, 25, rate=10, ttft=2.0)
    b.load(25, 40, rate=10)
    b.fault(10, 15)
    result = judge(b, "recovery", config(slo=SLO, recovery={"window": 2, "max_time": 5}))
    assert result.verdict is Verdict.INVALID
    assert result.figures["max_time_to_recover_s"] == pytest.approx(10, abs=0.6)


def test_recovery_unknown_without_faults_or_observation(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path / "a")
    b.load(0, 10)
    assert judge(b, "recovery").verdict is Verdict.UNKNOWN
    b = RunBuilder(tmp_path / "b")
    b.load(0, 10)
    b.fault(8, 10)  # reverted as the load ends: nothing observed after
    result = judge(b, "recovery", config(slo=SLO, recovery={"max_time": 5}))
    assert result.verdict is Verdict.UNKNOWN, result.summary


def test_a_silently_cut_stream_makes_recovery_invalid(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 9.5, rate=10)
    b.request(9.9, duration=0.3)  # in flight at the fault, completed
    b.request(9.95, status="error_frame", duration=0.2)  # ended with an error frame
    b.request(9.97, status="truncated", duration=0.2)  # cut without a word
    b.load(10.5, 30, rate=10)
    b.fault(10, 12, name="network-reset")
    result = judge(b, "recovery", config(slo=SLO, recovery={"window": 2}))
    assert result.verdict is Verdict.INVALID
    fault = result.evidence["faults"][0]
    # in flight at the inject or at the revert
    assert fault["in_flight"]["failed_with_error"] == 1
    assert fault["in_flight"]["cut_silently"] == 1
    assert fault["in_flight"]["completed"] >= 1
    assert "cut silently" in result.summary
    assert fault["time_to_recover_s"] is not None  # it did recover: the cut alone fails it


def test_recovery_from_a_kill_is_timed_from_the_kill(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 10, rate=10)
    b.load(10, 13, rate=10, status="error_frame")
    b.load(13, 30, rate=10)
    b.fault(10, 20, name="process-kill", action="kill")
    result = judge(b, "recovery", config(slo=SLO, recovery={"window": 2, "max_time": 5}))
    assert result.verdict is Verdict.VALID, result.summary
    fault = result.evidence["faults"][0]
    assert fault["timed_from_kind"] == "fault"
    assert 2.5 <= fault["time_to_recover_s"] <= 3.5


# -- scaling ----------------------------------------------------------------------------------

SCALING = {"target_ongoing": 2, "up_within": 3, "down_within": 5, "sustain": 0.5}


def _scaling_run(b: RunBuilder, react_up: bool) -> None:
    b.load(0, 30, rate=2)
    for t in range(31):
        ongoing = 8 if 5 <= t < 20 else 1
        workers = 1
        if react_up and 7 <= t < 23:
            workers = 4
        b.sample(t, workers, ongoing=ongoing * workers // max(workers, 1))


def test_scaling_valid_when_workers_follow_the_load(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    _scaling_run(b, react_up=True)
    result = judge(b, "scaling", config(scaling=SCALING))
    assert result.verdict is Verdict.VALID, result.evidence
    directions = [e["direction"] for e in result.evidence["episodes"]]
    assert directions == ["up", "down"]


def test_scaling_invalid_when_the_fleet_never_grows(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    _scaling_run(b, react_up=False)
    result = judge(b, "scaling", config(scaling=SCALING))
    assert result.verdict is Verdict.INVALID
    assert "scale-up" in result.summary


def test_scaling_unknown_without_config_or_worker_counts(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 5)
    assert judge(b, "scaling").verdict is Verdict.UNKNOWN
    result = judge(b, "scaling", config(scaling=SCALING))
    assert result.verdict is Verdict.UNKNOWN and "telemetry" in result.summary


def test_scaling_from_registry_events(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 30, rate=2, duration=1.0)
    b.sample(0, 1)  # counts only; the load comes from the history
    b.telemetry = None
    b.events = [{"seq": 1, "time": T0, "type": "registered", "worker": "w0"}]
    result = judge(b, "scaling", config(scaling={**SCALING, "target_ongoing": 0.5}))
    assert result.evidence["worker_source"] == "events"
    assert result.verdict is Verdict.INVALID  # 1 in flight > 0.5 per worker, never scaled


# -- audit ------------------------------------------------------------------------------------

def _audited(tmp_path: Path) -> RunBuilder:
    b = RunBuilder(tmp_path)
    b.load(0, 3, rate=5)
    b.request(3.5, status="error_frame")
    return b


def test_audit_valid_when_every_request_matches(tmp_path: Path) -> None:
    b = _audited(tmp_path)
    b.audit_log()
    result = judge(b, "audit")
    assert result.verdict is Verdict.VALID, result.summary
    assert result.evidence["chain_ok"] is True
    assert result.figures["lost"] == 0


def test_audit_invalid_for_lost_duplicated_and_changed(tmp_path: Path) -> None:
    b = _audited(tmp_path / "lost")
    records = b.audit_log()
    b.audit = records[2:]  # the first request's records are gone
    assert "lost" in judge(b, "audit").summary
    b = _audited(tmp_path / "hash")
    first = b.history[0]["value"]["request_id"]
    b.audit_log(texts={first: "0" * 64})
    result = judge(b, "audit")
    assert result.verdict is Verdict.INVALID and result.figures["output_hash_mismatch"] == 1
    b = _audited(tmp_path / "dup")
    records = b.audit_log()
    b.audit = [*records, dict(records[0], seq=len(records) + 1)]
    result = judge(b, "audit")
    assert result.verdict is Verdict.INVALID and result.figures["duplicated"] == 1


def test_audit_invalid_when_the_chain_is_broken(tmp_path: Path) -> None:
    b = _audited(tmp_path)
    records = b.audit_log()
    records[3]["time"] += 1  # changed after the fact: its hash no longer matches
    result = judge(b, "audit")
    assert result.verdict is Verdict.INVALID
    assert "chain" in result.summary


def test_audit_unknown_without_a_log(tmp_path: Path) -> None:
    b = _audited(tmp_path)
    assert judge(b, "audit").verdict is Verdict.UNKNOWN


# -- steady state -----------------------------------------------------------------------------

@pytest.mark.parametrize(("before", "after", "verdict"), [
    (True, True, Verdict.VALID), (True, False, Verdict.INVALID),
    (False, False, Verdict.UNKNOWN), (None, True, Verdict.UNKNOWN)])
def test_steady_state(tmp_path: Path, before: bool | None, after: bool,
                      verdict: Verdict) -> None:
    b = RunBuilder(tmp_path)
    if before is not None:
        b.probe(-1, "before", before)
    b.load(0, 5)
    b.probe(6, "after", after)
    assert judge(b, "steady_state").verdict is verdict


def test_steady_state_unknown_without_probes(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 5)
    assert judge(b, "steady_state").verdict is Verdict.UNKNOWN


# -- the runner and the input -----------------------------------------------------------------

def test_a_crashing_check_is_unknown_never_a_pass(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 5)
    run = load_run(b.write())

    def broken(ctx: Context) -> CheckResult:
        raise ZeroDivisionError("oops")

    def fine(ctx: Context) -> CheckResult:
        return CheckResult("fine", Verdict.VALID, "ok")

    result = run_checks(run, CheckConfig(), {"fine": fine, "broken": broken})
    assert [r.verdict for r in result.results] == [Verdict.VALID, Verdict.UNKNOWN]
    assert "ZeroDivisionError" in result.results[1].summary
    assert result.verdict is Verdict.UNKNOWN and result.exit_code == 3


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 2)
    path = b.write()
    with open(path / "history.jsonl", "a") as fh:
        fh.write('{"type": "ok", "f": "chat", "val')
    run = load_run(path)
    assert len(run.requests) == 20 and run.skipped_lines == {"history.jsonl": 1}


def test_bad_input_is_a_usage_error_naming_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no history\.jsonl"):
        load_run(tmp_path)
    bad = tmp_path / "checks.yaml"
    bad.write_text("slo:\n  ttft:\n    p95: -1\n")
    with pytest.raises(UsageError, match=r"slo\.ttft\.p95"):
        load_config(bad)
    bad.write_text("slo:\n  ttft_p95: 1\n")
    with pytest.raises(UsageError, match=r"slo\.ttft_p95"):
        load_config(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(UsageError, match="mapping"):
        load_config(bad)


def test_checks_json_is_plain_json(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 5)
    b.fault(2, 3)
    result = run_checks(load_run(b.write()), config(slo=SLO))
    assert json.loads(json.dumps(result.to_json()))["verdict"] in ("valid", "unknown",
                                                                   "invalid")
