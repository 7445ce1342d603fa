"""The same deployment behaviour gets the same verdict on a machine 3x slower (DESIGN.md,
"Verdicts that do not depend on the machine"): a recorded run and a copy with every duration
and every gap between times stretched 3x, both judged by `llm-chaos check`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main

from .rundir import RunBuilder, slowed_copy

SLOWER = 3.0

RELATIVE = """\
checks: [slo, recovery]
slo:
  ttft: {p95: 3x baseline}
  e2e: {p95: 3x baseline}
  error_rate: 0.05
recovery:
  window: 5
  max_time: 20x baseline e2e p95
"""


def _absolute(fast: dict[str, Any]) -> str:
    """Bounds in seconds tuned to the fast run: 1.5x its baseline, as one would set them by
    looking at a run on a developer's machine."""
    base = fast["phases"]["baseline"]["latency_s"]
    return ("checks: [slo, recovery]\n"
            f"slo: {{ttft: {{p95: {1.5 * base['ttft']['p95']:.4f}}}, "
            f"e2e: {{p95: {1.5 * base['e2e']['p95']:.4f}}}, error_rate: 0.05}}\n"
            "recovery: {window: 5, max_time: 20}\n")


def _game_day(path: Path, *, after_revert: str) -> Path:
    """40 s of baseline at about 1 request/s, a 15 s error fault with a revert, then 65 s of
    load; `after_revert`: `warm` (TTFT 5x for 5 s, then as before), `slow` (TTFT 10x for
    30 s), or `degraded` (TTFT 10x to the end)."""
    rng = random.Random(16)
    b = RunBuilder(path)
    for i in range(120):
        at = i + rng.uniform(-0.3, 0.3) + 0.5
        ttft = rng.uniform(0.08, 0.16)
        itl = rng.uniform(0.02, 0.035)
        tokens = rng.randint(12, 24)
        if 40 <= at < 55:
            b.request(at, status="error_frame", duration=0.05)
            continue
        since = at - 55
        slow = {"warm": since < 5, "slow": since < 30, "degraded": True}[after_revert]
        if since >= 0 and slow:
            ttft *= 5 if after_revert == "warm" else 10
        b.request(at, ttft=ttft, itl=itl, tokens=tokens)
    b.fault(40, 55)
    return b.write()


def _check(run_dir: Path, config: str, tmp_path: Path, name: str,
           capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str], dict[str, Any]]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(config)
    out = tmp_path / f"{name}-report"
    code = main(["check", str(run_dir), "--config", str(cfg), "--out", str(out)])
    printed = capsys.readouterr().out
    checks = json.loads((out / "checks.json").read_text())
    verdicts = {c["name"]: c["verdict"] for c in checks["checks"]}
    assert all(c["summary"] for c in checks["checks"]), printed
    return code, verdicts, checks


@pytest.mark.parametrize(("after_revert", "expected"), [
    ("warm", {"slo": "valid", "recovery": "valid"}),
    ("slow", {"slo": "valid", "recovery": "invalid"}),
    ("degraded", {"slo": "valid", "recovery": "invalid"}),
])
def test_a_3x_slower_machine_gets_the_same_verdicts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], after_revert: str,
        expected: dict[str, str]) -> None:
    fast = _game_day(tmp_path / "fast", after_revert=after_revert)
    slow = slowed_copy(fast, tmp_path / "slow", SLOWER)
    f_code, f_verdicts, f_checks = _check(fast, RELATIVE, tmp_path, "fast", capsys)
    s_code, s_verdicts, s_checks = _check(slow, RELATIVE, tmp_path, "slow", capsys)
    assert f_verdicts == expected, f_checks
    assert s_verdicts == f_verdicts, s_checks
    assert s_code == f_code == (0 if after_revert == "warm" else 1)
    # the slow run was held to its own pace: bounds and windows 3x those of the fast run
    f_rec, s_rec = (c["checks"][1] for c in (f_checks, s_checks))
    ttft = [c["checks"][0]["evidence"]["thresholds_resolved"]["ttft"]["p95"]
            for c in (f_checks, s_checks)]
    assert ttft[0]["written"] == "3x baseline"
    assert ttft[1]["seconds"] == pytest.approx(SLOWER * ttft[0]["seconds"])
    assert s_rec["figures"]["window_s"] == pytest.approx(SLOWER * f_rec["figures"]["window_s"])
    assert f_rec["figures"]["window_s"] > 5  # ~1 request/s: 5 s would hold too few
    assert s_rec["figures"]["judged_requests"] == f_rec["figures"]["judged_requests"] > 0
    assert "judged on" in s_rec["summary"]
    if after_revert == "warm":
        ttr = [c["figures"]["max_time_to_recover_s"] for c in (f_rec, s_rec)]
        assert 2 <= ttr[0] <= 8 and ttr[1] == pytest.approx(SLOWER * ttr[0])


def test_absolute_bounds_tuned_on_a_fast_machine_fail_a_slow_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the relative bounds buy: the same config in seconds flips the slow run's verdict
    (and this test would notice if the relative ones stopped doing their job)."""
    fast = _game_day(tmp_path / "fast", after_revert="warm")
    slow = slowed_copy(fast, tmp_path / "slow", SLOWER)
    _, _, probe = _check(fast, RELATIVE, tmp_path, "probe", capsys)
    absolute = _absolute(probe)
    f_code, f_verdicts, _ = _check(fast, absolute, tmp_path, "fast", capsys)
    s_code, s_verdicts, s_checks = _check(slow, absolute, tmp_path, "slow", capsys)
    assert f_code == 0 and f_verdicts == {"slo": "valid", "recovery": "valid"}
    assert s_code == 1 and s_verdicts["slo"] == "invalid", s_checks
    assert s_verdicts != f_verdicts
