"""Issue 18: a run's figures in vLLM bench's shape. `results.json` has every field of vLLM's
result file (a fixture written from vLLM's documented fields) in the same units, computed from
the recorded requests; `--goodput ttft:MS e2el:MS` counts goodput as vLLM does; summary.json
carries the same figures per phase; `e2el` is accepted where the config says `e2e`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from tests.harness.checks.rundir import RunBuilder

FIXTURE = Path(__file__).parent / "fixtures" / "vllm_bench_result.json"


def _run(tmp_path: Path) -> Path:
    b = RunBuilder(tmp_path / "run")
    b.load(0, 10, rate=10, ttft=0.05, itl=0.01, tokens=10)   # 100 requests within 60 ms
    b.load(10, 20, rate=10, ttft=0.10, itl=0.01, tokens=10)  # 100 past it
    b.load(20, 21, rate=4, status="http_error")              # 4 failures
    return b.write()


def _history(run: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [line["value"] for line in lines if line.get("f") == "chat"]


def test_results_json_has_vllm_bench_fields_in_vllm_units(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    run = _run(tmp_path)
    assert main(["check", str(run), "--goodput", "ttft:60", "e2el:2000"]) in (0, 1, 3)
    capsys.readouterr()
    ours = json.loads((run / "results.json").read_text())
    theirs = json.loads(FIXTURE.read_text())["result"]
    missing = sorted(set(theirs) - set(ours))
    assert missing == [], f"fields of vLLM's result file missing from ours: {missing}"
    for key, value in theirs.items():  # same JSON types (a null where there is no sample)
        assert ours[key] is None or isinstance(ours[key], type(value)) or (
            isinstance(value, float) and isinstance(ours[key], int)), (key, ours[key])

    done = [v for v in _history(run) if v["status"] == "ok"]
    ttft_ms = sorted(v["ttft"] * 1000 for v in done)
    e2e_ms = [v["e2e"] * 1000 for v in done]
    gaps_ms = [g * 1000 for v in done for g in v["itl"]]
    assert ours["completed"] == 200 and ours["failed"] == 4 and ours["num_prompts"] == 204
    assert ours["total_output_tokens"] == sum(v["output_tokens"] for v in done)
    assert ours["total_input_tokens"] == sum(v["prompt_tokens"] for v in done)
    assert ours["median_ttft_ms"] == pytest.approx(statistics.median(ttft_ms))
    assert ours["mean_e2el_ms"] == pytest.approx(statistics.fmean(e2e_ms))
    assert ours["std_ttft_ms"] == pytest.approx(statistics.pstdev(ttft_ms))
    assert ours["p99_itl_ms"] == pytest.approx(10.0) and len(gaps_ms) == 200 * 9
    assert ours["p90_ttft_ms"] == pytest.approx(100.0)
    duration = ours["duration"]
    assert 20.0 < duration < 22.0  # seconds, first request sent to last answered
    assert ours["request_throughput"] == pytest.approx(200 / duration)
    assert ours["output_throughput"] == pytest.approx(ours["total_output_tokens"] / duration)
    assert ours["total_token_throughput"] == pytest.approx(
        (ours["total_input_tokens"] + ours["total_output_tokens"]) / duration)
    # goodput as vLLM counts it: the 100 completed requests with TTFT <= 60 ms
    assert ours["request_goodput"] == pytest.approx(100 / duration)
    assert ours["goodput"] == {"ttft": 60.0, "e2el": 2000.0}

    phases = json.loads((run / "summary.json").read_text())["phases"]
    baseline = phases["baseline"]  # no fault: the whole run is baseline
    assert baseline["completed"] == 200 and baseline["median_ttft_ms"] == ours["median_ttft_ms"]
    assert baseline["request_goodput"] == pytest.approx(100 / baseline["duration"])


def test_without_goodput_bounds_request_goodput_is_null(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    run = _run(tmp_path)
    main(["check", str(run)])
    capsys.readouterr()
    assert json.loads((run / "results.json").read_text())["request_goodput"] is None


def test_e2el_is_taken_for_e2e_and_a_bad_goodput_exits_2(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    run = _run(tmp_path)
    config = tmp_path / "checks.yaml"
    config.write_text("slo:\n  e2el: {p95: 0.001}\n  request: {e2el: 2.0}\n  error_rate: 1\n")
    assert main(["check", str(run), "--config", str(config)]) == 1  # e2e p95 over 1 ms
    out = capsys.readouterr().out
    assert "e2e p95" in out, out
    assert json.loads((run / "results.json").read_text())["goodput"] == {"e2el": 2000.0}
    for bad, says in ((["ttft=5"], "KEY:MILLISECONDS"), (["itl:5"], "ttft, tpot, e2el"),
                      (["ttft:fast"], "not a number"), (["ttft:0"], "more than 0")):
        assert main(["check", str(run), "--goodput", *bad]) == 2
        assert says in capsys.readouterr().err, bad
