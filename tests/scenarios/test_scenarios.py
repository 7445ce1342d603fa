"""`locust -f scenarios/` runs headless against a reference worker and writes its run directory."""

from __future__ import annotations

import ast
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.launcher import ServerProcess, free_port
from tests.harness.loadgen.conftest import LOCUST, ROOT, RunLocust, locust_env

SCENARIOS = ROOT / "scenarios"


def test_scenario_files_follow_the_rules() -> None:
    """Unique user class names ending in User; helpers start with `_`; no shadowed package."""
    names: list[str] = []
    for path in sorted(SCENARIOS.glob("*.py")):
        if path.name.startswith("_"):
            continue
        assert path.stem not in {"locust", "httpx", "openai", "gevent", "harness", "requests",
                                 "json", "random", "typing"}, path
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("User"):
                names.append(node.name)
    assert len(names) >= 5
    assert [n for n, c in Counter(names).items() if c > 1] == []


def _check_run(run_dir: Path, output: str) -> None:
    assert (run_dir / "history.jsonl").exists(), output[-3000:]
    assert (run_dir / "experiment.yaml").exists()
    records: list[dict[str, Any]] = _lines(run_dir / "history.jsonl")
    assert records, output[-3000:]
    scenarios = {r["value"]["scenario"] for r in records}
    assert {"chat_qa", "completions", "multi_turn"} <= scenarios
    assert all(r["value"]["status"] in ("ok", "interrupted") for r in records), [
        r["value"]["error"] for r in records if r["value"]["status"] not in ("ok", "interrupted")]
    # Locust's table: one entry per request name; TTFT and the rest in the LLM table beside it
    for name in ("chat", "completion"):
        assert f"POST     {name} " in output, output[-4000:]
    assert ":ttft" not in output
    assert "LLM stats" in output, output[-4000:]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(run_locust: RunLocust, worker: ServerProcess, seconds: int) -> int:
    run = run_locust("-f", str(SCENARIOS), "--headless", "-u", "8", "-r", "8", "-t",
                     f"{seconds}s", "--host", worker.url, "--max-tokens", "16", "--completions",
                     timeout=seconds + 90)
    assert run.code == 0, run.output[-4000:]
    _check_run(run.run_dir, run.output)
    return len(_lines(run.run_dir / "history.jsonl"))


def test_all_scenarios_headless(sim_worker: ServerProcess, run_locust: RunLocust) -> None:
    assert _run(run_locust, sim_worker, 10) > 0


@pytest.mark.slow
def test_all_scenarios_headless_30s(sim_worker: ServerProcess, run_locust: RunLocust) -> None:
    assert _run(run_locust, sim_worker, 30) > 0


def test_completions_are_opt_in(sim_worker: ServerProcess, run_locust: RunLocust) -> None:
    """`-f scenarios/` runs the chat scenarios only; /v1/completions needs --completions."""
    run = run_locust("-f", str(SCENARIOS), "--headless", "-u", "4", "-r", "4", "-t", "2s",
                     "--host", sim_worker.url, "--max-tokens", "4")
    assert run.code == 0, run.output[-3000:]
    assert {r["value"]["scenario"] for r in run.records()} == {
        "chat_qa", "long_generation", "mixed_sizes", "multi_turn"}
    assert "not running CompletionsUser" in run.output and "--completions" in run.output


def test_step_shape_from_the_command_line(sim_worker: ServerProcess,
                                          run_locust: RunLocust) -> None:
    locustfiles = f"{SCENARIOS / 'chat_qa.py'},{SCENARIOS / 'load_shape.py'}"
    run = run_locust("-f", locustfiles,
                     "--headless", "-u", "3", "-t", "3s", "--load-shape", "step",
                     "--step-users", "1", "--step-time", "1", "--host", sim_worker.url)
    assert run.code == 0, run.output[-3000:]
    records = run.records()
    first_sent: dict[str, float] = {}
    for r in records:
        user = r["process"]
        first_sent[user] = min(first_sent.get(user, float("inf")), r["value"]["sent_at"])
    starts = sorted(first_sent.values())
    assert len(starts) == 3, first_sent  # one user more each second, up to -u 3
    assert 0.7 < starts[1] - starts[0] < 1.6 and 0.7 < starts[2] - starts[1] < 1.6, starts


def test_web_ui(sim_worker: ServerProcess, tmp_path: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    proc = ServerProcess([LOCUST, "-f", str(SCENARIOS / "chat_qa.py"), "--web-host",
                          "127.0.0.1", "--web-port", str(port), "--host", sim_worker.url,
                          "--run-dir", str(run_dir)], f"http://127.0.0.1:{port}",
                         tmp_path / "web.log", env=locust_env())
    try:
        proc.wait_ready(timeout=60, path="/")
        with httpx.Client(base_url=proc.url, timeout=10) as web:
            started = web.post("/swarm", data={"user_count": 2, "spawn_rate": 2,
                                               "host": sim_worker.url})
            assert started.json()["success"], started.text
            time.sleep(3)
            stats = web.get("/stats/requests").json()
            names = {s["name"] for s in stats["stats"]}
            assert names == {"chat", "Aggregated"}, names  # no `chat:ttft`
            # the LLM tab's rows ride along with Locust's stats; its CSV is a download
            llm = {t["key"]: t["data"] for t in stats["extended_stats"]}["llm"]
            assert [row["name"] for row in llm] == ["chat_qa", "Aggregated"], llm
            assert float(llm[-1]["itl50"]) > 0 and float(llm[-1]["tokensPerSecond"]) > 0
            assert web.get("/llm-chaos/stats/llm.csv").text.startswith("Name,Request Count,")
            web.get("/stop")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (run_dir / "history.jsonl").exists():
            time.sleep(0.1)
    finally:
        proc.stop()
    records = _lines(run_dir / "history.jsonl")
    assert len(records) >= 4
