"""`llm-chaos run`: every shipped game day (worker kill, scale-up, latency, memory leak, the
mixed demo) passes against the reference target (sim engine), each weakened twin fails with
the right check invalid, a malformed experiment is refused before anything starts, and no
process the run started outlives it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from harness.cli import main
from harness.machine import describe
from harness.report import REPORT_FILES

from ...conftest import SIM_DEPHASED

ROOT = Path(__file__).resolve().parents[3]
GAMEDAY = ROOT / "scenarios" / "gameday_worker_kill.yaml"
# CI speed: the simulated engine, and a shorter run with the kill moved to keep its shape
FAST = ["--set", "target.model=sim", "--set", "load.duration=20", "--set", "faults[0].at=8",
        "--set", "faults[0].for=4", "--set", f"target.worker_args={json.dumps(SIM_DEPHASED)}"]
SCALE_UP = ROOT / "scenarios" / "gameday_scale_up.yaml"
# the spike (2 -> 8 users) moved earlier and shortened, still longer than `up_within` (10 s) so
# the pinned twin misses it, with time left after it for the scale-down (downscale delay 5 s)
SCALE_UP_FAST = ["--set", "target.model=sim", "--set", "load.duration=26",
                 "--set", "load.spike_at=4", "--set", "load.spike_duration=13"]
LATENCY = ROOT / "scenarios" / "gameday_latency.yaml"
LATENCY_FAST = ["--set", "target.model=sim", "--set", "load.duration=30",
                "--set", "faults[0].at=6", "--set", "faults[0].for=10"]
LEAK = ROOT / "scenarios" / "gameday_memory_leak.yaml"
# a sim worker holds ~35 MiB: limit and bound scaled down; the leak still lasts longer than the
# grace period (15 s) after it crosses the bound, so the twin without a limit breaks it
LEAK_FAST = ["--set", "target.model=sim", "--set", "target.memory_limit_mb=250",
             "--set", "checks.memory.max_mb=300", "--set", "load.duration=42",
             "--set", "faults[0].at=5", "--set", "faults[0].for=30"]
DEMO = ROOT / "scenarios" / "gameday_demo.yaml"
DEMO_FAST = ["--set", "target.model=sim", "--set", "target.memory_limit_mb=250",
             "--set", "checks.memory.max_mb=300",
             "--set", "load.duration=40", "--set", "faults[0].at=5",
             "--set", "faults[0].for=3", "--set", "faults[1].at=12",
             "--set", "faults[1].for=6", "--set", "faults[2].at=22",
             "--set", "faults[2].for=12"]


def _run(tmp_path: Path, *extra: str, gameday: Path = GAMEDAY,
         fast: Sequence[str] = FAST, min_processes: int = 3) -> tuple[int, Path]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = main(["run", str(gameday), "--report-dir", str(tmp_path), *fast, *extra])
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    # every process the run started is gone: its children, and every target process the
    # observer saw (workers, restarted ones included, are the router's children, not ours)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == [], f"processes left running: {left}"
    seen: set[int] = set()
    for line in (run_dir / "telemetry.jsonl").read_text().splitlines():
        sample = json.loads(line)
        seen |= {int(w["pid"]) for w in sample.get("workers", []) if w.get("pid")}
        seen |= {int(p["pid"]) for p in sample.get("processes", [])}
    # worker kill: the router, two workers and the one restarted after the kill
    assert len(seen) >= min_processes
    alive = [pid for pid in seen if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"target processes left running: {alive}"
    return code, run_dir


def _verdicts(run_dir: Path) -> dict[str, str]:
    checks = json.loads((run_dir / "checks.json").read_text())["checks"]
    return {c["name"]: c["verdict"] for c in checks}


def _passes(tmp_path: Path, capsys: pytest.CaptureFixture[str], checks: Sequence[str],
            *extra: str, **run: Any) -> tuple[Path, str]:
    """Run a game day that must pass: exit 0 and exactly `checks`, each valid."""
    code, run_dir = _run(tmp_path, *extra, **run)
    out = capsys.readouterr().out
    assert code == 0, out
    assert _verdicts(run_dir) == dict.fromkeys(checks, "valid")
    return run_dir, out


def _recycles(run_dir: Path) -> list[dict[str, Any]]:
    """The target's `recycle` events (a leaking worker replaced)."""
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "recycle"]


def _twin_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                check: str, phrase: str, still_valid: Sequence[str] = ("audit",),
                **run: Any) -> None:
    """Run a game day with one `--set` weakening the target: exit 1, `check` invalid with
    `phrase` in its summary, the `still_valid` checks valid."""
    code, run_dir = _run(tmp_path, "--set", override, **run)
    out = capsys.readouterr().out
    assert code == 1, out
    verdicts = _verdicts(run_dir)
    assert verdicts[check] == "invalid", verdicts
    assert all(verdicts[name] == "valid" for name in still_valid), verdicts
    result = json.loads((run_dir / "summary.json").read_text())["checks"][check]
    assert phrase in result["summary"], result


@pytest.mark.long
def test_gameday_passes_on_the_reference_target(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, run_dir = _run(tmp_path)
    out = capsys.readouterr().out
    assert code == 0, out
    for name in (*REPORT_FILES, "experiment.yaml", "history.jsonl", "telemetry.jsonl",
                 "audit.jsonl", "events.jsonl"):
        assert (run_dir / name).is_file(), name
    assert _verdicts(run_dir) == {"slo": "valid", "recovery": "valid", "audit": "valid",
                                  "steady_state": "valid"}
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    kinds = {(x["f"], x["type"]) for x in history}
    assert {("chat", "ok"), ("inject", "ok"), ("revert", "ok"), ("probe", "ok")} <= kinds
    inject = next(x for x in history if x["f"] == "inject" and x["type"] == "ok")
    assert inject["value"]["fault"] == "process-kill"
    # progress lines while it ran: phase, requests, errors, the active fault
    assert "load + faults" in out and "active faults: process-kill" in out
    # the session's phases, in order (runner/session.py)
    phases = [out.index(f"] {phase} ") for phase in (
        "prepare", "steady state before", "load + faults", "revert", "steady state after",
        "collect", "judge")]
    assert phases == sorted(phases), out
    assert "verdict: valid (exit 0)" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_code"] == 0 and summary["requests"] > 50
    # the machine, named before the load and kept with the run, with each worker's engine
    machine = json.loads((run_dir / "machine.json").read_text())
    assert machine["cpu_model"] == describe()["cpu_model"]
    assert [w["id"] for w in machine["workers"]] and "workers_error" not in machine
    line = next(x for x in out.splitlines() if x.strip().startswith("machine: "))
    assert machine["cpu_model"] in line and "; workers: " in line
    assert out.index(line) < out.index("starting load")


@pytest.mark.long
def test_weakened_twin_fails_the_recovery_check(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _twin_fails(tmp_path, capsys, "target.resume_streams=false", "recovery", "error budget")


@pytest.mark.long
def test_gameday_with_users_sized_from_the_measured_capacity(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`load.users: auto`: the capacity is measured after the steady-state probes, its line
    printed before the load, Locust runs exactly the users chosen, every check stays valid."""
    run_dir, out = _passes(tmp_path, capsys, ("slo", "recovery", "audit", "steady_state"),
                           "--set", "load.users=auto")
    capacity = json.loads((run_dir / "capacity.json").read_text())
    users = capacity["users"]
    assert capacity["requested"] == "auto" and 1 <= users <= 64
    assert capacity["streams"] == capacity["streams_completed"] == 16
    assert capacity["tokens"] == capacity["max_tokens"] == 32  # chat_qa's, the sim ignores EOS
    assert users == max(1, min(64, round(0.5 * capacity["tokens_per_s"] * capacity["e2e_1"]
                                         / capacity["tokens"])))
    line = next(x for x in out.splitlines() if x.strip().startswith("capacity: "))
    assert line.strip().endswith(f"-> {users} users (utilization 0.5)"), line
    assert out.index("probe models listed: ok (before)") < out.index(line) \
        < out.index("starting load")
    # what ran: Locust's own count, and the resolved experiment says it too
    log = (run_dir / "locust.log").read_text()
    assert f"All users spawned: {{\"ChatQAUser\": {users}}} ({users} total users)" in log
    assert yaml.safe_load((run_dir / "experiment.yaml").read_text())["load"]["users"] == users
    # the measurement's streams are audited but are not the run's requests
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    chats = [x for x in history if x["f"] == "chat"]
    checks = json.loads((run_dir / "checks.json").read_text())["checks"]
    audit = next(c for c in checks if c["name"] == "audit")
    assert audit["evidence"]["client_requests"] == len(chats)
    assert audit["evidence"]["audited_not_in_history"] >= 2 + 16


def test_users_auto_with_a_spike_exits_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(SCALE_UP), "--report-dir", str(tmp_path),
                 "--set", "load.users=auto"]) == 2
    err = capsys.readouterr().err
    assert "load.users: auto works with the shapes steady, ramp, step, soak" in err


@pytest.mark.long
def test_scale_up_gameday_passes_on_the_reference_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, out = _passes(tmp_path, capsys, ("slo", "scaling", "audit", "steady_state"),
                           gameday=SCALE_UP, fast=SCALE_UP_FAST, min_processes=4)
    scaling = json.loads((run_dir / "checks.json").read_text())["checks"]
    (result,) = [c for c in scaling if c["name"] == "scaling"]
    # the spike was answered up to the ceiling and the fleet shrank after it
    assert result["evidence"]["workers_min"] == 1 and result["evidence"]["workers_max"] == 3
    directions = {e["direction"] for e in result["evidence"]["episodes"]}
    assert directions == {"up", "down"}, result["evidence"]
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = {e["type"] for e in events}
    assert {"scale_up", "scale_down"} <= kinds, kinds
    assert "verdict: valid (exit 0)" in out


# make test-all (the 20-minute budget of make test): scaling judged invalid end to end; the
# scaling check's invalid verdict stays in the default run as a unit test (tests/harness/checks)
@pytest.mark.slow
def test_scale_up_twin_pinned_to_one_worker_fails_scaling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _twin_fails(tmp_path, capsys, "target.max_workers=1", "scaling", "scale-up needed",
                gameday=SCALE_UP, fast=SCALE_UP_FAST, min_processes=2)


def test_malformed_experiment_exits_2_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GAMEDAY.read_text().replace("users: 8", "users: many"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["run", str(bad), "--report-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "load.users" in err
    assert not (tmp_path / "reports").exists()  # refused before anything was created
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_bad_override_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(GAMEDAY), "--report-dir", str(tmp_path),
                 "--set", "target.wokers=3"]) == 2
    assert "target.wokers" in capsys.readouterr().err


@pytest.mark.long
def test_demo_gameday_kill_latency_and_leak(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo`'s game day, shortened on the simulated engine: a kill, router latency and a
    memory leak the supervisor recycles; every check valid."""
    run_dir, out = _passes(tmp_path, capsys,
                           ("slo", "recovery", "audit", "steady_state", "memory"),
                           gameday=DEMO, fast=DEMO_FAST, min_processes=4)
    assert _recycles(run_dir), "the leaking worker was not recycled"
    assert "report.html" in out


# make test-all (the 20-minute budget of make test): the default run keeps an audit loss
# found end to end by explore's planted-bug search (test_explore.py)
@pytest.mark.slow
def test_demo_twin_with_a_lossy_audit_log_fails_the_audit_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The mixed game day against a router that loses its audit log after 40 records and serves
    on without it."""
    _twin_fails(tmp_path, capsys, "target.audit_lossy_after=40", "audit", "lost",
                ("recovery", "memory"), gameday=DEMO, fast=DEMO_FAST, min_processes=4)


# make test-all: the demo game day (default run) passes the same router latency; the
# latency twin below stays in the default run
@pytest.mark.slow
def test_latency_gameday_passes_on_the_reference_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = _passes(tmp_path, capsys, ("slo", "recovery", "audit", "steady_state"),
                         gameday=LATENCY, fast=LATENCY_FAST)
    # the latency was really there: requests sent during the fault waited for it
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    slow = [x for x in history if x["f"] == "chat" and (x["value"].get("ttft") or 0) > 5.5]
    assert slow, "no request saw the 6 s of added latency"
    # slow, not failed (the requests in flight when the load stopped end `info`, interrupted)
    assert [x for x in history if x["f"] == "chat" and x["type"] == "fail"] == []


# make test-all (the 20-minute budget of make test): the worker-kill twin keeps recovery
# judged invalid end to end in the default run
@pytest.mark.slow
def test_latency_twin_with_a_tight_deadline_fails_the_recovery_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _twin_fails(tmp_path, capsys, "target.request_timeout=5", "recovery", "error budget",
                gameday=LATENCY, fast=LATENCY_FAST)


# make test-all: the demo game day (default run) passes the same leak and recycle; the
# leak twin below stays in the default run
@pytest.mark.slow
def test_memory_leak_gameday_passes_on_the_reference_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = _passes(tmp_path, capsys,
                         ("slo", "recovery", "audit", "steady_state", "memory"),
                         gameday=LEAK, fast=LEAK_FAST, min_processes=4)
    assert _recycles(run_dir), "the leaking worker was not recycled"


# make test-all (the 20-minute budget of make test): the demo game day keeps the memory
# check end to end (valid), its invalid verdict is unit-tested (test_memory.py)
@pytest.mark.slow
def test_memory_leak_twin_without_a_limit_fails_the_memory_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _twin_fails(tmp_path, capsys, "target.memory_limit_mb=null", "memory",
                "held over 300 MiB", gameday=LEAK, fast=LEAK_FAST)


def test_locust_gets_the_api_key_only_through_its_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.experiment import parse_experiment
    from harness.runner.lifecycle import _load_env

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-shell")
    monkeypatch.setenv("GW_KEY", "sk-gateway")
    named = parse_experiment("target: {url: 'http://h:1/v1', api_key_env: GW_KEY, headers: "
                             "{X-Org: r}}\nload: {duration: 1}\n")
    assert _load_env(named)["OPENAI_API_KEY"] == "sk-gateway"
    assert named.target.endpoint_args() == ["--header=X-Org: r"]  # no key on a command line
    unnamed = parse_experiment("target: {url: 'http://h:1'}\nload: {duration: 1}\n")
    assert "OPENAI_API_KEY" not in _load_env(unnamed)  # not sent where the file did not ask
