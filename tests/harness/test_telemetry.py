"""The observer against a real `serve --model sim` fleet: samples every 0.5 s with worker
states, metrics and processes, and the checks read its telemetry.jsonl (worker counts)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.checks.config import CheckConfig, ScalingConfig
from harness.checks.run import load_run
from harness.checks.scaling import check_scaling, worker_series
from harness.launcher import ServerProcess, free_port, start_fleet
from harness.telemetry import Observer, parse_metrics

TOKEN = "telemetry-test-token"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fleet")
    proc = start_fleet("--model", "sim", "--workers", "2", log_path=tmp / "fleet.log",
                       worker_logs=tmp / "logs", admin_token=TOKEN)
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()


def test_samples_every_half_second_and_checks_read_them(fleet: ServerProcess,
                                                         tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = run_dir / "telemetry.jsonl"
    with Observer(fleet.url, TOKEN, out, interval=0.5, router_pid=fleet.pid):
        time.sleep(2.2)
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert 4 <= len(samples) <= 6
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(samples)]
    assert all(0.35 <= g <= 0.8 for g in gaps), gaps
    last = samples[-1]
    assert "errors" not in last, last
    assert {w["id"] for w in last["workers"]} == {"sim-1", "sim-2"}
    assert all(w["state"] == "live" and w["rss_bytes"] > 0 and w["pid"] > 0
               for w in last["workers"])
    assert last["metrics"]["vllm:num_requests_running"] == 0
    assert last["metrics"]['llm_chaos_workers{state="live"}'] == 2
    pids = {p["pid"] for p in last["processes"]}
    assert {fleet.pid, *(w["pid"] for w in last["workers"])} <= pids
    assert all(p["rss_bytes"] > 0 and p["cpu_percent"] >= 0 for p in last["processes"])

    # the checks' side: a run directory with this telemetry gives worker counts
    first = samples[0]["time"]
    request = {"type": "ok", "f": "chat", "process": "0", "time": first + 1.0,
               "value": {"request_id": "r1", "sent_at": first + 0.5, "status": "ok"}}
    (run_dir / "history.jsonl").write_text(json.dumps(request) + "\n")
    run = load_run(run_dir)
    assert run.telemetry is not None and len(run.telemetry) == len(samples)
    assert all(s.workers == 2 and s.ongoing == 0 and (s.rss_bytes or 0) > 0
               for s in run.telemetry)
    series = worker_series(run)
    assert series is not None and series[1] == "telemetry"
    result = check_scaling(run, CheckConfig(scaling=ScalingConfig(target_ongoing=2)))
    assert result.evidence["worker_source"] == "telemetry"
    assert result.evidence["workers_min"] == result.evidence["workers_max"] == 2


def test_a_dead_target_is_recorded_not_raised(tmp_path: Path) -> None:
    out = tmp_path / "telemetry.jsonl"
    observer = Observer(f"http://127.0.0.1:{free_port()}", TOKEN, out, interval=0.05,
                        timeout=0.5)
    with observer:
        time.sleep(0.3)
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert samples and observer.errors == len(samples)
    assert all("workers" not in s and any("workers:" in e for e in s["errors"])
               for s in samples)


def test_parse_metrics_sums_labelled_series() -> None:
    text = ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n'
            '# TYPE llm_chaos_workers gauge\nllm_chaos_workers{state="live"} 2\n'
            'llm_chaos_workers{state="dead"} 1\n'
            '# TYPE vllm:e2e_request_latency_seconds histogram\n'
            'vllm:e2e_request_latency_seconds_bucket{le="1.0"} 4\n'
            'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 5\n'
            'vllm:e2e_request_latency_seconds_count 5\nvllm:e2e_request_latency_seconds_sum 2.5\n')
    metrics = parse_metrics(text)
    assert metrics["vllm:num_requests_running"] == 3
    assert metrics["llm_chaos_workers"] == 3 and metrics['llm_chaos_workers{state="dead"}'] == 1
    assert metrics["vllm:e2e_request_latency_seconds_count"] == 5
    assert not any("_bucket" in name for name in metrics)
