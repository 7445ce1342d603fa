"""Acceptance (issue 18): the load generator against a fleet that requires a bearer key
(`serve --api-key`). Without the key every request is a recorded 401 with the server's reason,
and with no `--model` the run stops at once naming `--model`; with the key (from
$OPENAI_API_KEY, Locust's default) every request is a 200. The key appears nowhere in the run
directory or in Locust's output."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.experiment import load_experiment
from harness.launcher import free_port, start_fleet

from .conftest import LOCUSTFILES, LocustRun, RunLocust, locust_env

# fresh per session, so finding it anywhere can only be a leak of this run
KEY = "sk-test-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def keyed_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("keyed-fleet")
    proc = start_fleet("--model", "sim", "--workers", "1", f"--api-key={KEY}",
                       "--worker-arg=--sim-ttft=0.005", "--worker-arg=--sim-itl=0.002",
                       log_path=logs / "router.log", worker_logs=logs,
                       admin_token=secrets.token_hex(8))
    try:
        proc.wait_ready(timeout=60)
        yield proc.url
    finally:
        proc.stop()


def _env(key: str | None) -> dict[str, str]:
    env = locust_env()
    env.pop("OPENAI_API_KEY", None)
    if key is not None:
        env["OPENAI_API_KEY"] = key
    return env


def _load(run_locust: RunLocust, url: str, *extra: str, key: str | None) -> LocustRun:
    return run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "2",
                      "-r", "2", "-t", "2s", "--host", url, *extra, env=_env(key))


def _answered(run: LocustRun) -> list[dict[str, Any]]:
    """The run's records, less those cut short when Locust stopped its users (`info`)."""
    return [r for r in run.records() if r["value"]["status"] != "interrupted"]


def _assert_no_key(run: LocustRun) -> None:
    assert KEY not in run.output
    files = [p for p in run.run_dir.rglob("*") if p.is_file()]
    assert files, f"nothing written under {run.run_dir}"
    leaks = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_without_the_key_requests_are_recorded_401(keyed_fleet: str,
                                                   run_locust: RunLocust) -> None:
    run = _load(run_locust, keyed_fleet, "--model", "sim", key=None)
    assert run.code == 1, run.output[-3000:]
    records = _answered(run)
    assert records, run.output[-3000:]
    for record in records:
        value = record["value"]
        assert record["type"] == "fail", value
        assert value["http_status"] == 401, value
        assert value["status"] == "http_error", value
        assert "HTTP 401" in value["error"] and "missing API key" in value["error"], value
    assert "HTTP 401" in run.output  # Locust's failure table names the reason too
    _assert_no_key(run)


def test_wrong_key_is_refused_and_not_written(keyed_fleet: str, run_locust: RunLocust) -> None:
    wrong = "sk-wrong-" + secrets.token_hex(16)
    run = _load(run_locust, keyed_fleet, "--model", "sim", "--api-key", wrong, key=None)
    assert run.code == 1, run.output[-3000:]
    records = _answered(run)
    assert records and all(r["value"]["http_status"] == 401 for r in records)
    assert all("invalid API key" in r["value"]["error"] for r in records)
    for path in [p for p in run.run_dir.rglob("*") if p.is_file()]:
        assert wrong.encode() not in path.read_bytes(), path


def test_model_discovery_fails_loudly_without_the_key(keyed_fleet: str,
                                                      run_locust: RunLocust) -> None:
    run = _load(run_locust, keyed_fleet, key=None)
    assert run.code == 2, run.output[-3000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    assert "/v1/models answered HTTP 401" in run.output, run.output[-3000:]
    assert "missing API key" in run.output and "--model" in run.output, run.output[-3000:]
    assert run.records() == []  # no request went out under a guessed model name


def test_with_the_key_requests_are_200(keyed_fleet: str, run_locust: RunLocust) -> None:
    # the key from $OPENAI_API_KEY (the default), the model found through GET /v1/models;
    # `/v1/` on the base URL: the client must not ask for /v1/v1/... (a 404)
    run = _load(run_locust, keyed_fleet + "/v1/", "--header", "X-Org: hdr-value-x91", key=KEY)
    assert run.code == 0, run.output[-3000:]
    records = _answered(run)
    assert len(records) >= 2, run.output[-3000:]
    assert all(r["type"] == "ok" and r["value"]["http_status"] == 200 for r in records), \
        [r["value"]["error"] for r in records if r["type"] != "ok"][:3]
    assert all(r["value"]["output_tokens"] for r in records)
    _assert_no_key(run)
    text = (run.run_dir / "experiment.yaml").read_text()
    assert "hdr-value-x91" not in text and KEY not in text  # a value may be a credential
    target = load_experiment(run.run_dir / "experiment.yaml").target  # the one shape
    assert target.api_key_env == "OPENAI_API_KEY" and list(target.headers) == ["X-Org"]


def test_bad_header_exits_2_naming_it(run_locust: RunLocust, tmp_path: Path) -> None:
    run = _load(run_locust, f"http://127.0.0.1:{free_port()}", "--header", "X-Org research",
                key=None)
    assert run.code == 2, run.output[-3000:]
    assert "--header 'X-Org research'" in run.output and "Name: value" in run.output
