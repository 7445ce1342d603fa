"""Recovery windows sized from the run's own request rate, so a sparse (slow) run still gets a
verdict, and every recovery verdict says how much evidence it rests on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.checks import CheckConfig, Verdict, build_timeline, load_run
from harness.checks.config import RecoveryConfig
from harness.checks.recovery import check_recovery
from harness.checks.run import RequestRecord
from harness.checks.timeline import size_windows

from .rundir import T0, RunBuilder


def config(**data: Any) -> CheckConfig:
    return CheckConfig.model_validate(data)


def _sent(*times: float) -> list[RequestRecord]:
    return [RequestRecord(str(i), "ok", sent_at=t, end=t + 1) for i, t in enumerate(times)]


def test_a_busy_run_keeps_the_configured_window() -> None:
    sizing = size_windows(_sent(*[i / 10 for i in range(100)]), 0, 20, 10,
                          RecoveryConfig(window=5, step=0.5))
    assert (sizing.window, sizing.step, sizing.rate_from) == (5, 0.5, "baseline")
    assert sizing.rate == pytest.approx(10)


def test_a_sparse_run_gets_a_window_expected_to_hold_twice_min_requests() -> None:
    # 0.5 requests/s before the fault at t=50 (busier after it): 2 * 3 / 0.5 = 12 s
    sizing = size_windows(_sent(*range(0, 50, 2), *range(50, 200)), 0, 200, 50,
                          RecoveryConfig(window=5, step=0.5, min_requests=3))
    assert sizing.rate == pytest.approx(0.5)
    assert sizing.window == pytest.approx(12) and sizing.step == pytest.approx(1.2)
    assert not sizing.capped


def test_without_baseline_requests_the_rate_comes_from_the_whole_run() -> None:
    sizing = size_windows(_sent(*range(0, 100, 4)), 0, 100, 0, RecoveryConfig())
    assert sizing.rate_from == "run" and sizing.rate == pytest.approx(0.25)
    assert sizing.window == pytest.approx(24)


def test_the_window_is_capped_at_half_the_run() -> None:
    sizing = size_windows(_sent(0, 30), 0, 40, 35, RecoveryConfig(window=5))
    assert sizing.window == pytest.approx(20) and sizing.capped
    # a configured window longer than that is the user's to choose
    assert size_windows(_sent(0, 30), 0, 40, 35, RecoveryConfig(window=30)).window == 30
    assert size_windows([], 0, 40, 35, RecoveryConfig(window=5)).window == 5


def _sparse(tmp_path: Path) -> RunBuilder:
    """0.4 requests/s: a 5 s window holds 2 requests, fewer than recovery.min_requests (3)."""
    b = RunBuilder(tmp_path)
    b.load_around_fault(0, 40, 55, 120, rate=0.4)
    return b


def test_a_sparse_run_now_gets_a_recovery_verdict(tmp_path: Path) -> None:
    run = load_run(_sparse(tmp_path).write())
    cfg = config(slo={"ttft": {"p95": "3x baseline"}, "error_rate": 0.05},
                 recovery={"window": 5, "max_time": 10})
    timeline = build_timeline(run, cfg)
    assert timeline.windowing.window == pytest.approx(15)
    result = check_recovery(run, timeline, cfg)
    assert result.verdict is Verdict.VALID, result.summary
    fault = result.evidence["faults"][0]
    assert fault["window_s"] == pytest.approx(15) and fault["judged_requests"] == 26
    assert fault["judged_tokens"] == 260
    assert result.evidence["windowing"]["rate_rps"] == pytest.approx(0.4)
    assert result.figures["window_s"] == pytest.approx(15)
    assert "recovered in 0.00s (judged on 26 requests, 260 tokens; window 15s)" \
        in result.summary


def test_fixed_5s_windows_would_have_held_too_few(tmp_path: Path) -> None:
    """What the sizing changed: no 5 s window after the revert holds 3 requests (the old
    verdict was `unknown: no window had enough requests`); the 15 s ones all do."""
    run = load_run(_sparse(tmp_path).write())
    after = [r.sent_at - T0 for r in run.requests if r.sent_at - T0 >= 55]
    assert max(sum(1 for t in after if a <= t < a + 5) for a in after) == 2
    cfg = config(slo={"error_rate": 0.05}, recovery={"window": 5, "max_time": 10})
    windows = build_timeline(run, cfg).recoveries[0].windows
    assert all(w.requests >= 3 for w in windows if w.start - T0 + 15 <= 120)


def test_unknown_only_when_no_window_had_enough_requests(tmp_path: Path) -> None:
    b = RunBuilder(tmp_path)
    b.load(0, 40, rate=1)
    b.fault(40, 55)
    b.request(60)  # a single request after the revert
    run = load_run(b.write())
    cfg = config(recovery={"max_time": 5})
    result = check_recovery(run, build_timeline(run, cfg), cfg)
    assert result.verdict is Verdict.UNKNOWN
    assert "had 3 requests; 1 sent in all" in result.summary
    assert "judged on 0 requests" in result.summary
