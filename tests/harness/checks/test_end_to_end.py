"""A real run: the Locust scenarios against a simulated-engine worker, then `llm-chaos check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.launcher import ServerProcess
from tests.harness.loadgen.conftest import ROOT, RunLocust


def test_check_a_real_run(sim_worker: ServerProcess, run_locust: RunLocust, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    run = run_locust("-f", str(ROOT / "scenarios"), "--headless", "-u", "4", "-r", "4",
                     "-t", "4s", "--host", sim_worker.url, "--max-tokens", "8",
                     "--seed", "7", timeout=120)
    assert run.code == 0, run.output[-3000:]
    config = tmp_path / "checks.yaml"
    # generous bounds: this machine's CPUs are shared; the point is the wiring, not speed
    config.write_text("checks: [slo, recovery]\n"
                      "slo: {ttft: {p95: 5}, e2e: {p99: 30}, error_rate: 0.0, "
                      "min_requests: 3}\n")
    code = main(["check", str(run.run_dir), "--config", str(config)])
    out = capsys.readouterr().out
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["checks"]["slo"]["verdict"] == "valid", out
    assert summary["checks"]["recovery"]["verdict"] == "unknown", out  # no fault in this run
    assert code == 3 and summary["seed"] == 7
    assert summary["phases"]["baseline"]["requests"] >= 3
    html = (run.run_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3
    config.write_text("checks: [slo]\nslo: {ttft: {p95: 5}, error_rate: 0.0, "
                      "min_requests: 3}\n")
    assert main(["check", str(run.run_dir), "--config", str(config)]) == 0
