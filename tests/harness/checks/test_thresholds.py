"""Relative service levels: `<k>x baseline` parsed at the YAML boundary and resolved against the
run's own baseline phase; unresolvable ones make the checks that need them unknown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.checks import CheckConfig, Verdict, build_timeline, load_config, load_run
from harness.checks.config import Relative
from harness.checks.recovery import check_recovery
from harness.checks.slo import check_slo
from harness.checks.thresholds import resolve
from harness.errors import UsageError
from harness.experiment import parse_experiment

from .rundir import RunBuilder


def config(**data: Any) -> CheckConfig:
    return CheckConfig.model_validate(data)


@pytest.mark.parametrize(("written", "parsed"), [
    (0.5, 0.5), (2, 2.0), ("3x baseline", Relative(3.0)), ("2.5x baseline", Relative(2.5)),
    (" 1.5 X Baseline ", Relative(1.5)), ("4x  baseline", Relative(4.0))])
def test_a_percentile_bound_is_seconds_or_a_multiple_of_the_baseline(
        tmp_path: Path, written: object, parsed: object) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump({"slo": {"ttft": {"p95": written}}}))
    loaded = load_config(path)
    assert loaded.slo.ttft.p95 == parsed
    # the form written is the form dumped (checks.yaml beside a run reads back the same)
    dumped = loaded.model_dump(mode="json")
    assert CheckConfig.model_validate(dumped) == loaded
    if isinstance(parsed, Relative):
        assert dumped["slo"]["ttft"]["p95"] == f"{parsed.factor:g}x baseline"


def test_max_time_names_the_baseline_figure_it_scales(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text("recovery: {max_time: 20x baseline e2e p95}\n")
    assert load_config(path).recovery.max_time == Relative(20.0, "e2e", "p95")
    path.write_text("recovery: {max_time: 3x baseline}\n")
    with pytest.raises(UsageError, match=r"recovery\.max_time: .*'20x baseline e2e p95'"):
        load_config(path)


@pytest.mark.parametrize("bad", ["fast", "3x", "x baseline", "0x baseline", "-2x baseline",
                                 "3x baseline e2e p95", "3 times baseline", -1, 0, True])
def test_a_bad_bound_is_a_usage_error_naming_the_field_and_the_forms(
        tmp_path: Path, bad: object) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump({"slo": {"e2e": {"p99": bad}}}))
    with pytest.raises(UsageError) as err:
        load_config(path)
    message = str(err.value)
    assert "slo.e2e.p99" in message and "'<k>x baseline'" in message
    assert "number of seconds" in message and "Value error" not in message


def test_an_experiment_file_checks_relative_bounds_the_same_way() -> None:
    base = "target: {url: http://127.0.0.1:8000}\nload: {users: 1, duration: 5}\n"
    experiment = parse_experiment(base + "checks: {slo: {ttft: {p95: 3x baseline}}}\n")
    assert experiment.checks.slo.ttft.p95 == Relative(3.0)
    with pytest.raises(UsageError, match=r"checks\.slo\.ttft\.p95: .*<k>x baseline"):
        parse_experiment(base + "checks: {slo: {ttft: {p95: three times}}}\n")


# -- resolution -------------------------------------------------------------------------------

def _run(tmp_path: Path, baseline: int = 20, fault: bool = True, **kw: Any) -> RunBuilder:
    b = RunBuilder(tmp_path)
    for i in range(baseline):
        b.request(i * 0.5, ttft=0.1 + 0.01 * (i % 10), **kw)  # ttft 0.10 .. 0.19
    if fault:
        b.load(baseline * 0.5, baseline * 0.5 + 5, rate=4, status="error_frame")
        b.fault(baseline * 0.5, baseline * 0.5 + 5)
        b.load(baseline * 0.5 + 5, baseline * 0.5 + 25, rate=4, ttft=0.15, **kw)
    return b


def test_a_relative_bound_resolves_to_k_times_the_baseline_figure(tmp_path: Path) -> None:
    run = load_run(_run(tmp_path).write())
    cfg = config(slo={"ttft": {"p95": "3x baseline", "p50": 0.4},
                      "itl": {"p99": "2x baseline"}},
                 recovery={"max_time": "10x baseline ttft p50"})
    baseline = [r for r in run.requests if r.sent_at < run.faults[0].time]
    thresholds = resolve(baseline, cfg)
    # ttft over 0.10 .. 0.19, two of each: p95 0.19, p50 0.145
    assert thresholds.slo.ttft.p95 == pytest.approx(3 * 0.19)
    assert thresholds.slo.ttft.p50 == 0.4  # absolute bounds pass through
    assert thresholds.slo.itl.p99 == pytest.approx(2 * 0.01)
    assert thresholds.max_time == pytest.approx(10 * 0.145)
    assert thresholds.resolved["ttft"]["p95"] == {
        "written": "3x baseline", "seconds": pytest.approx(0.57),
        "baseline_ttft_p95_s": pytest.approx(0.19)}
    assert thresholds.resolved["ttft"]["p50"] == {"written": 0.4, "seconds": 0.4}
    assert not thresholds.unresolved and thresholds.baseline_requests == 20
    # both checks judge the resolved seconds, and say so in their evidence
    timeline = build_timeline(run, cfg)
    slo = check_slo(run, timeline, cfg)
    assert slo.verdict is Verdict.VALID, slo.summary
    assert slo.evidence["thresholds_resolved"]["ttft"]["p95"]["seconds"] == pytest.approx(0.57)
    assert slo.evidence["thresholds"]["ttft"]["p95"] == "3x baseline"
    recovery = check_recovery(run, timeline, cfg)
    assert recovery.verdict is Verdict.VALID, recovery.summary
    assert recovery.evidence["faults"][0]["max_time_s"] == pytest.approx(1.45)


def test_after_the_fault_a_relative_bound_is_judged_in_seconds_of_this_run(
        tmp_path: Path) -> None:
    b = _run(tmp_path, fault=False)
    b.load(10, 15, rate=4, status="error_frame")
    b.fault(10, 15)
    b.load(15, 40, rate=4, ttft=0.7)  # 0.7 s: fine in seconds, 3.7x the baseline p95
    run = load_run(b.write())
    relative = config(slo={"ttft": {"p95": "3x baseline"}}, recovery={"max_time": 5})
    absolute = config(slo={"ttft": {"p95": 1.0}}, recovery={"max_time": 5})
    assert check_recovery(run, build_timeline(run, absolute), absolute).verdict \
        is Verdict.VALID
    result = check_recovery(run, build_timeline(run, relative), relative)
    assert result.verdict is Verdict.INVALID and "did not recover" in result.summary


def test_absolute_bounds_are_still_judged_in_the_baseline(tmp_path: Path) -> None:
    run = load_run(_run(tmp_path).write())
    cfg = config(slo={"ttft": {"p95": "3x baseline"}, "e2e": {"p95": 0.1}})
    result = check_slo(run, build_timeline(run, cfg), cfg)
    assert result.verdict is Verdict.INVALID
    assert "baseline (20 requests" in result.summary and "e2e p95" in result.summary


def test_a_thin_baseline_leaves_a_relative_bound_unresolved_and_the_checks_unknown(
        tmp_path: Path) -> None:
    run = load_run(_run(tmp_path, baseline=3).write())  # 3 < slo.min_requests (5)
    cfg = config(slo={"ttft": {"p95": "3x baseline"}}, recovery={"window": 2})
    timeline = build_timeline(run, cfg)
    assert timeline.thresholds.slo.ttft.p95 is None
    assert timeline.thresholds.resolved["ttft"]["p95"]["seconds"] is None
    slo = check_slo(run, timeline, cfg)
    assert slo.verdict is Verdict.UNKNOWN
    assert "not resolved" in slo.summary and "3 completed request(s)" in slo.summary
    recovery = check_recovery(run, timeline, cfg)
    assert recovery.verdict is Verdict.UNKNOWN and "not resolved" in recovery.summary
    assert recovery.evidence["thresholds_unresolved"]


def test_a_metric_without_baseline_samples_is_unresolved(tmp_path: Path) -> None:
    # one-token answers have no inter-token gaps to scale
    run = load_run(_run(tmp_path, tokens=1).write())
    cfg = config(slo={"itl": {"p95": "2x baseline"}, "ttft": {"p95": "3x baseline"}})
    timeline = build_timeline(run, cfg)
    assert timeline.thresholds.slo.ttft.p95 is not None
    result = check_slo(run, timeline, cfg)
    assert result.verdict is Verdict.UNKNOWN
    assert "no itl samples" in result.summary


def test_a_breach_of_a_resolved_bound_stays_invalid_when_another_is_unresolved(
        tmp_path: Path) -> None:
    run = load_run(_run(tmp_path, tokens=1).write())
    cfg = config(slo={"itl": {"p95": "2x baseline"}, "ttft": {"p95": 0.05}})
    result = check_slo(run, build_timeline(run, cfg), cfg)
    assert result.verdict is Verdict.INVALID  # invalid > unknown
