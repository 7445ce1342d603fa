"""`llm-chaos bench proxy` and `llm-chaos bench router` end to end, briefly, on the simulated
engine: every figure measured, every goal judged. The goals themselves are judged by full runs
(README, Benchmarks); these short runs only show the benchmarks work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benching import run_bench

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo


@pytest.mark.timeout(180)
def test_bench_proxy_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_bench(tmp_path, capsys, "proxy", "--requests", "10", "--latency-requests", "10",
                    "--streams", "1", "--stream-tokens", "500")
    figures, measured = run.figures, run.measured
    missing = [name for name, value in figures.items() if value is None]
    assert not missing, f"not measured: {missing}"
    assert measured == {"pass-through": True, "latency precision": True, "throughput": True}
    # a 200 ms latency toxic shows, however loaded the machine
    assert 190 < (figures["latency.added_ttft.p50_ms"] or 0) < 260
    assert (figures["throughput.proxy_mb_s"] or 0) > 0
    assert "throughput (MB/s)" in run.out


@pytest.mark.timeout(180)
def test_bench_router_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_bench(tmp_path, capsys, "router", "--requests", "10", "--kills", "1",
                    "--kill-model", "sim")
    figures, measured = run.figures, run.measured
    missing = [name for name, value in figures.items() if value is None]
    assert not missing, f"not measured: {missing}"
    assert all(measured.values()) and measured
    assert "goals" in run.out
