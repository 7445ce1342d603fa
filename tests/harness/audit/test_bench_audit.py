"""`llm-chaos bench audit` end to end, briefly: both fleets measured, the log verified."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benching import run_bench

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo


@pytest.mark.timeout(180)
def test_bench_audit_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_bench(tmp_path, capsys, "audit", "--rounds", "1", "--seconds", "0.5",
                    "--streams", "4", "--max-tokens", "8")
    figures = run.figures
    assert figures["audit_on.tokens_per_s"] > 0 and figures["audit_off.tokens_per_s"] > 0
    assert figures["audit.cost_pct"] is not None and figures["audit.verifies"] == 1.0
    assert figures["audit.requests"] > 0
    assert [r["audit"] for r in run.data["details"]["rounds"]] == ["on", "off"]
    assert "audit cost" in run.out
