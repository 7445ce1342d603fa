"""`llm-chaos run EXP.yaml --ui`: the worker-kill game day (simulated engine, shortened) runs
with Locust's web UI and the game-day console instead of headless. Its JSON endpoints,
checked during the run, show the planned kill ahead of now, then its window, the fleet's
restart and its event, and at the end the final verdicts (those of checks.json) with the
report; the command exits with the verdict's code and leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from harness.launcher import free_ports, stop_tree

from ...conftest import SIM_DEPHASED

ROOT = Path(__file__).resolve().parents[3]
GAMEDAY = ROOT / "scenarios" / "gameday_worker_kill.yaml"
FAST = ["--set", "target.model=sim", "--set", "load.duration=12", "--set", "faults[0].at=4",
        "--set", "faults[0].for=3", "--set", f"target.worker_args={json.dumps(SIM_DEPHASED)}",
        "--set", "checks.recovery.window=3"]


# make test-all (the 20-minute budget of make test): the console itself is driven end to
# end by the browser test (tests/harness/loadgen/test_console.py)
@pytest.mark.slow
def test_run_with_the_console(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    console = f"http://127.0.0.1:{port}/llm-chaos/console/api"
    env = {**os.environ, "LLM_CHAOS_ADMIN_TOKEN": "run-ui-token"}
    cmd = [str(Path(sys.executable).with_name("llm-chaos")), "run", str(GAMEDAY),
           "--report-dir", str(tmp_path), *FAST, "--ui", f"127.0.0.1:{port}",
           "--ui-linger", "1"]
    log = tmp_path / "run.log"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    seen: dict[str, Any] = {}
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while popen.poll() is None and time.monotonic() < deadline:
            try:
                state = httpx.get(console + "/state", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.3)
                continue
            if state["status"] == "running" and state["planned"] and \
                    state["planned"][0]["start"] > state["now"]:
                seen.setdefault("planned_ahead", state["planned"][0])
            for window in state["windows"]:
                seen.setdefault("window", window)
            for worker in state["fleet"]["workers"]:
                if worker["restarts"] >= 1:
                    seen.setdefault("restarted", worker)
            if any(e["type"] == "restarted" for e in state["fleet"]["events"]):
                seen.setdefault("event", True)
            if state["status"] == "ended":
                seen.setdefault("verdicts", httpx.get(console + "/verdicts", timeout=10).json())
            time.sleep(0.3)
        code = popen.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stop_tree(popen, timeout=20)
    text = log.read_text(errors="replace")
    assert code == 0, text[-4000:]
    assert f"game-day console: http://127.0.0.1:{port}/?tab=chaos" in text
    assert "run-ui-token" not in text  # the operator's own token is never echoed
    assert seen.get("planned_ahead", {}).get("fault") == "process-kill", seen
    assert seen["window"]["fault"] == "process-kill" and seen["window"]["by"] == "schedule"
    assert "restarted" in seen and "event" in seen, seen
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    final = seen["verdicts"]
    assert final["final"] is True and final["report"] == "report.html"
    checks = json.loads((run_dir / "checks.json").read_text())["checks"]
    assert {c["name"]: c["verdict"] for c in final["checks"]} == {
        c["name"]: c["verdict"] for c in checks}
    assert all(c["verdict"] == "valid" for c in checks), checks
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == [], f"processes left running: {left}"
