"""Acceptance (issue 21): `llm-chaos run` killed with SIGKILL while a worker is paused leaves no
process of the run: its guard resumes the worker, then stops the router (with its workers) and
Locust, within 5 s. `faults clear` stops what a run left when its guard died with it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from harness.faults.state import read_state

ROOT = Path(__file__).resolve().parents[3]

EXPERIMENT = {
    "name": "sigkill-the-harness",
    "target": {"model": "sim", "workers": 2, "audit_log": True},
    "load": {"locustfile": "scenarios/chat_qa.py", "users": 2, "spawn_rate": 2,
             "duration": "60s"},
    "faults": [{"kind": "process-pause", "on": "worker", "count": 1, "at": "1s", "for": "50s"}],
    "checks": {"checks": ["audit"]},
}


def _running(pids: list[int]) -> list[str]:
    """The processes of `pids` still running (a zombie has ended), with their command lines."""
    left = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


def _kill_all(pids: list[int]) -> None:
    """Whatever a failed test left of the run: resumed (if paused) and killed."""
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.resume()
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _injected(run_dir: Path) -> dict[str, object] | None:
    path = run_dir / "nemesis.jsonl"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "ok" and record["f"] == "inject":
            return dict(record["value"])
    return None


def _start(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path, int]:
    """`llm-chaos run` as its own process, until its fault is in force: (proc, run dir, the
    paused worker's pid)."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(EXPERIMENT))
    reports = tmp_path / "reports"
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(exp),
                                 "--report-dir", str(reports)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while True:
            runs = list(reports.glob("*")) if reports.exists() else []
            value = _injected(runs[0]) if runs else None
            if value is not None:
                break
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the pause was not injected within 120 s"
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    paused = int(value["victims"][0]["pid"])  # type: ignore[index]
    assert psutil.Process(paused).status() == psutil.STATUS_STOPPED
    return proc, runs[0], paused


def test_sigkill_of_the_harness_leaves_no_process(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its state file lands in tmp_path
    proc, run_dir, paused = _start(tmp_path, env)
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    names = " ".join(" ".join(psutil.Process(p).cmdline()) for p in tree)
    # the guard, the router, its two workers and Locust
    assert "guard" in names and "serve" in names and "locust" in names, names
    assert paused in tree and len(tree) >= 5, names
    killed = time.monotonic()
    proc.kill()
    proc.wait()
    left = _running(tree)
    while left and time.monotonic() - killed < 5.0:
        time.sleep(0.05)
        left = _running(tree)
    _kill_all(tree)  # (only if the assertion below fails is there anything to kill)
    assert left == [], f"{len(left)} process(es) of the run still running 5 s after its SIGKILL: " \
        f"{left}"
    print(f"{len(tree)} processes of the run gone {time.monotonic() - killed:.2f} s after SIGKILL")
    states = list((tmp_path / f"llm-chaos-faults-{os.getuid()}").glob("*.json"))
    assert states == [], "the guard left its state file"
    # the router really is gone: nothing answers on its port any more
    port = re.search(r"on http://127.0.0.1:(\d+)",
                     (run_dir / "target.log").read_text())
    assert port is not None
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(port.group(1)))) != 0


def test_faults_clear_stops_a_fleet_whose_guard_died(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc, _, paused = _start(tmp_path, env)
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    (guard,) = [p for p in tree if "guard" in " ".join(psutil.Process(p).cmdline())]
    states = list((tmp_path / f"llm-chaos-faults-{os.getuid()}").glob("*.json"))
    assert len(states) == 1
    _, entries = read_state(states[0])
    kinds = [e.heal.kind for e in entries]
    assert kinds.count("stop_process") == 2 and "resume_process" in kinds, kinds
    # the guard dies first, then the harness: only `faults clear` is left to heal
    os.kill(guard, signal.SIGKILL)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    others = [p for p in tree if p != guard]
    try:
        assert psutil.Process(paused).status() == psutil.STATUS_STOPPED
        assert len(_running(others)) == len(others)
        out = subprocess.run([sys.executable, "-m", "harness.cli", "faults", "clear"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        left = _running(others)
    _kill_all(others)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed pid" in out.stdout and out.stdout.count("stopped pid") == 2, out.stdout
    assert left == [], left
    again = subprocess.run([sys.executable, "-m", "harness.cli", "faults", "clear"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "stopped pid" not in again.stdout, again.stdout
