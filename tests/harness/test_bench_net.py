"""`llm-chaos bench proxy` and `llm-chaos bench router` end to end, briefly, on the simulated
engine: every figure measured, every goal judged. The goals themselves are judged by full runs
(README, Benchmarks); these short runs only show the benchmarks work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo


def _figures(path: Path) -> tuple[dict[str, float | None], dict[str, bool]]:
    data = json.loads(path.read_text())
    return ({f["name"]: f["value"] for f in data["figures"]},
            {g["name"]: g["measured"] for g in data["goals"]})


@pytest.mark.timeout(180)
def test_bench_proxy_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "proxy.json"
    assert main(["bench", "proxy", "--requests", "10", "--latency-requests", "10",
                 "--streams", "1", "--stream-tokens", "500", "--json", str(out)]) == 0
    figures, measured = _figures(out)
    missing = [name for name, value in figures.items() if value is None]
    assert not missing, f"not measured: {missing}"
    assert measured == {"pass-through": True, "latency precision": True, "throughput": True}
    # a 200 ms latency toxic shows, however loaded the machine
    assert 190 < (figures["latency.added_ttft.p50_ms"] or 0) < 260
    assert (figures["throughput.proxy_mb_s"] or 0) > 0
    assert "throughput (MB/s)" in capsys.readouterr().out


@pytest.mark.timeout(180)
def test_bench_router_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "router.json"
    assert main(["bench", "router", "--requests", "10", "--kills", "1", "--kill-model", "sim",
                 "--json", str(out)]) == 0
    figures, measured = _figures(out)
    missing = [name for name, value in figures.items() if value is None]
    assert not missing, f"not measured: {missing}"
    assert all(measured.values()) and measured
    assert "goals" in capsys.readouterr().out
