"""Issue 18: `llm-chaos run` against a deployment that wants an API key. The experiment names
the variable that holds it (`target.api_key_env`): the load, the steady-state probes of `/v1/*`
and the checks all see a keyed server answer, and the key appears nowhere in the run
directory. Without the key the probes fail and the load cannot start: verdict unknown, with
the server's 401 in the output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.launcher import start_fleet

KEY = "sk-run-auth-0123456789"
ADMIN = "run-auth-admin"


@pytest.fixture(scope="module")
def keyed_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("keyed")
    proc = start_fleet("--model", "sim", "--workers", "1", f"--api-key={KEY}",
                       "--worker-arg=--sim-ttft=0.02", "--worker-arg=--sim-itl=0.005",
                       log_path=logs / "router.log", worker_logs=logs, admin_token=ADMIN)
    try:
        proc.wait_ready(timeout=60)
        yield proc.url
    finally:
        proc.stop()


def _experiment(tmp_path: Path, url: str, api_key_env: str | None) -> Path:
    target: dict[str, object] = {"url": url + "/v1", "admin_token": ADMIN}
    if api_key_env:
        target["api_key_env"] = api_key_env
    doc = {"name": "keyed", "target": target,
           "load": {"locustfile": "scenarios/chat_qa.py", "users": 2, "spawn_rate": 2,
                    "duration": "4s", "max_tokens": 8},
           "steady_state": [{"type": "http", "name": "models listed", "url": "/v1/models",
                             "status": 200}],
           "checks": {"checks": ["steady_state", "slo"], "slo": {"error_rate": 0.0}}}
    path = tmp_path / "keyed.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run_dir(reports: Path) -> Path:
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
    return run_dir


def test_a_keyed_deployment_passes_with_the_key_named_and_keeps_it_out_of_the_run(
        tmp_path: Path, keyed_fleet: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUN_AUTH_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    reports = tmp_path / "reports"
    code = main(["run", str(_experiment(tmp_path, keyed_fleet, "RUN_AUTH_KEY")),
                 "--report-dir", str(reports)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "probe models listed: ok (before)" in out and "probe models listed: ok (after)" in out
    run_dir = _run_dir(reports)
    checks = json.loads((run_dir / "checks.json").read_text())["checks"]
    assert {c["name"]: c["verdict"] for c in checks} == {"steady_state": "valid",
                                                          "slo": "valid"}, checks
    leaked = [p.name for p in run_dir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == [], f"the API key is written in {leaked}"
    assert KEY not in out


def test_without_the_key_the_probes_and_the_load_fail(
        tmp_path: Path, keyed_fleet: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    reports = tmp_path / "reports"
    code = main(["run", str(_experiment(tmp_path, keyed_fleet, None)),
                 "--report-dir", str(reports)])
    out = capsys.readouterr().out
    # not steady before the run and no request sent: nothing can be concluded, and the
    # output says why
    assert code == 3, out
    assert "probe models listed: FAILED (before)" in out, out
    assert "/v1/models answered HTTP 401" in out and "--api-key" in out, out
    checks = json.loads((_run_dir(reports) / "checks.json").read_text())["checks"]
    assert {c["name"]: c["verdict"] for c in checks}["steady_state"] == "unknown", checks
