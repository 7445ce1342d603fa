"""`llm-chaos bench client` end to end on a small setting: every figure present, goal judged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benching import run_bench

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo


@pytest.mark.timeout(240)
def test_bench_client_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_bench(tmp_path, capsys, "client", "--users", "2", "--seconds", "2")
    figures = run.figures
    for client in ("ours", "baseline"):
        for name in ("ttft_error_p50_ms", "ttft_error_p99_ms", "itl_error_p50_ms",
                     "itl_error_p99_ms", "events_per_s", "cpu_us_per_event"):
            assert figures[f"{client}.users_2.{name}"] is not None, name
        # 2 users x 32 tokens every ~0.36 s: about 180 events/s, whatever the client
        assert 100 < figures[f"{client}.users_2.events_per_s"] < 200
        # medians are sub-millisecond even on a busy machine
        assert figures[f"{client}.users_2.ttft_error_p50_ms"] < 1.0
    assert list(run.measured) == ["vs_baseline"]
    assert "client timing error against the simulated engine" in run.out
