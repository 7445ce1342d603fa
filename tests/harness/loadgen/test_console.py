"""The game-day console in a real browser: a simulated fleet, Locust with its web UI and a
chaos plan, headless Chromium driven by selenium. The test starts the load from Locust's page,
opens the Chaos tab, unlocks it with the admin token, injects 300 ms of latency on one worker
from the form, sees it listed and the TTFT p95 line rise, reverts it, sees it gone and the
line fall, and sees the final verdicts and the report link; `llm-chaos check` on the run
directory gives the verdicts the console showed. A screenshot of each step is written to the
test's folder. Every process (fleet, Locust, chromedriver, Chromium) is stopped by PID.

Chromium and chromedriver are Debian's (`.ci/run` and `make browser` install them); selenium
is told both paths, so nothing is downloaded at run time."""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from harness.checks.cli import check_command
from harness.launcher import ServerProcess, free_ports, start_fleet, stop_tree

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "console-test-token"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1700")
RUN_TIME = 18  # seconds of load
PLAN = {
    "name": "console-gameday",
    "target": {"model": "sim", "workers": 2},
    "load": {"locustfile": "scenarios/chat_qa.py", "users": 4, "spawn_rate": 4,
             "duration": RUN_TIME},
    "steady_state": [{"type": "http", "name": "router healthy", "url": "/health"}],
    "checks": {"checks": ["slo", "recovery", "steady_state"],
               "slo": {"ttft": {"p95": "4x baseline"}, "error_rate": 0.05,
                       "judge_phases": ["baseline", "steady"]},
               "recovery": {"window": 3.0, "max_time": 10.0}},
}


def _until(what: str, probe: Callable[[], Any], timeout: float, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # the page may be between two redraws
            last = exc
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ServerProcess]:
    """Two sim workers behind the reference router; stopped by PID."""
    with start_fleet("--model", "sim", "--workers", "2", log_path=tmp_path / "fleet.log",
                     worker_logs=tmp_path / "fleet-logs", admin_token=TOKEN) as proc:
        proc.wait_ready(timeout=60)
        _until("two live workers", lambda: sum(
            w["state"] == "live" for w in httpx.get(
                proc.url + "/admin/workers", headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=5).json()["workers"]) == 2, 60)
        yield proc


@pytest.fixture
def locust_ui(tmp_path: Path, fleet: ServerProcess) -> Iterator[tuple[str, Path]]:
    """Locust with its web UI, the llm-chaos plugin and the plan; (UI URL, run dir)."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    run_dir = tmp_path / "run"
    (port,) = free_ports(1)
    env = {**os.environ, "LLM_CHAOS_ADMIN_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "locust", "-f", "scenarios/chat_qa.py", "--chaos-plan",
           str(plan), "--host", fleet.url, "--web-host", "127.0.0.1", "--web-port", str(port),
           "-u", "4", "-r", "4", "-t", f"{RUN_TIME}s", "--run-dir", str(run_dir)]
    log = tmp_path / "locust.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _until("Locust's web UI", lambda: httpx.get(url + "/", timeout=2).status_code == 200,
               60)
        yield url, run_dir
    finally:
        stop_tree(popen, timeout=20)
        text = log.read_text(errors="replace")
        assert TOKEN not in text, "the admin token leaked into Locust's log"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through chromedriver, a fresh profile; stopped by PID."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: install Debian's chromium and "
                    "chromium-driver (`make browser`, as .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path /
                                                                         "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    assert service.process is not None
    root = psutil.Process(service.process.pid)
    try:
        yield driver
    finally:
        tree = [root, *root.children(recursive=True)]
        try:
            driver.quit()
        finally:
            for proc in tree:
                if proc.is_running():
                    proc.kill()
            psutil.wait_procs(tree, timeout=10)


def _series(driver: Any, name: str) -> list[tuple[float, float]]:
    line = driver.find_element("css selector",
                               f"#chart-latency polyline[data-series={name}]")
    ts, values = json.loads(line.get_attribute("data-t")), json.loads(
        line.get_attribute("data-values"))
    return [(t, v) for t, v in zip(ts, values, strict=True) if v is not None]


def _window(driver: Any, inject: str) -> tuple[float, float]:
    rect = driver.find_element("css selector", f'#chart-latency rect[data-inject="{inject}"]')
    return float(rect.get_attribute("data-start")), float(rect.get_attribute("data-end"))


def _refused_without_token_origin_or_csrf(url: str) -> None:
    """State-changing requests need the console's own origin, a session (the admin token,
    entered once) and its CSRF token; the token is never sent back."""
    api = url + "/llm-chaos/console/api"
    own = {"Origin": url}
    with httpx.Client(timeout=10) as client:
        assert client.post(api + "/login", json={"token": TOKEN}, headers={
            "Origin": "http://evil.example"}).status_code == 403
        assert client.post(api + "/login", json={"token": "guess"}, headers=own
                           ).status_code == 403
        assert client.post(api + "/inject", json={"kind": "admin-latency"}, headers=own
                           ).status_code == 401
        login = client.post(api + "/login", json={"token": TOKEN}, headers=own)
        assert login.status_code == 200 and TOKEN not in login.text
        assert "httponly" in login.headers["set-cookie"].lower()
        assert "samesite=strict" in login.headers["set-cookie"].lower()
        assert client.post(api + "/inject", json={"kind": "admin-latency"}, headers=own
                           ).status_code == 403  # the session, but no CSRF token
        assert client.post(api + "/revert", json={"inject": "x"}, headers={
            **own, "X-LLM-Chaos-CSRF": "forged"}).status_code == 403
        assert client.get(api + "/inject").status_code == 405  # POST only
        assert TOKEN not in client.get(api + "/state").text


def test_a_game_day_driven_from_the_browser(tmp_path: Path, locust_ui: tuple[str, Path],
                                            browser: Any) -> None:
    from selenium.webdriver.common.by import By

    url, run_dir = locust_ui
    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver = browser

    def shot(name: str) -> None:
        driver.switch_to.default_content()
        driver.save_screenshot(str(shots / f"{name}.png"))
        driver.switch_to.frame(driver.find_element(By.ID, "llm-chaos-console"))

    try:
        _drive(driver, url, run_dir, shots, shot, tmp_path)
    except Exception:  # what the browser showed, for the failure's reader
        driver.switch_to.default_content()
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        raise


def _drive(driver: Any, url: str, run_dir: Path, shots: Path, shot: Callable[[str], None],
           tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select


    _refused_without_token_origin_or_csrf(url)

    # Locust's own page: start the test, then its Chaos tab
    driver.get(url + "/")
    start = _until("Locust's start button", lambda: driver.find_element(
        By.CSS_SELECTOR, "button[type=submit]"), 20)
    driver.save_screenshot(str(shots / "01-locust-start.png"))
    start.click()
    tab = _until("the Chaos tab", lambda: next(
        t for t in driver.find_elements(By.CSS_SELECTOR, "[role=tab]")
        if t.text.strip().lower() == "chaos"), 20)
    tab.click()
    frame = _until("the console in the tab", lambda: driver.find_element(
        By.ID, "llm-chaos-console").is_displayed() and driver.find_element(
        By.ID, "llm-chaos-console"), 20)
    driver.switch_to.frame(frame)
    _until("the test running", lambda: driver.find_element(
        By.ID, "status").get_attribute("data-status") == "running", 20)

    # the admin token, entered once; the form appears
    driver.find_element(By.ID, "login-token").send_keys(TOKEN)
    driver.find_element(By.ID, "login-submit").click()
    _until("the inject form", lambda: driver.find_element(By.ID, "inject-form").is_displayed(),
           10)
    assert not driver.find_element(By.ID, "login-form").is_displayed()
    shot("02-console-unlocked")

    # a baseline first: TTFT p95 of a few buckets
    baseline = _until("a baseline", lambda: len(_series(driver, "ttft_p95")) >= 3
                      and _series(driver, "ttft_p95"), 20)
    base = statistics.median(v for _, v in baseline)

    # 300 ms of latency on one worker, from the form
    Select(driver.find_element(By.ID, "inject-kind")).select_by_value("admin-latency")
    for name, value in (("for", "60"), ("latency_s", "0.3"), ("count", "1")):
        field = driver.find_element(By.ID, f"inject-field-{name}")
        field.clear()
        field.send_keys(value)
    Select(driver.find_element(By.ID, "inject-field-on")).select_by_value("worker")
    driver.find_element(By.ID, "inject-submit").click()
    # the page redraws every second: each element is found and read in one go
    inject, text = _until("the fault listed", lambda: next(
        (r.get_attribute("data-inject"), r.text) for r in driver.find_elements(
            By.CSS_SELECTOR, '#active-faults tbody tr[data-fault="admin-latency"]')), 10)
    assert text.startswith("admin-latency sim-"), text  # one worker
    shot("03-fault-listed")
    injected_at = _until("its window", lambda: _window(driver, inject), 10)[0]
    peak = _until("the TTFT line to rise", lambda: [
        v for t, v in _series(driver, "ttft_p95") if t >= injected_at and v > base + 200], 15)
    shot("04-ttft-risen")

    # Revert: gone from the list, and the line falls back
    _until("Revert pressed", lambda: driver.find_element(
        By.CSS_SELECTOR, f'button.revert[data-inject="{inject}"]').click() or True, 10)
    _until("the fault gone", lambda: not driver.find_elements(
        By.CSS_SELECTOR, "#active-faults tbody tr"), 10)
    shot("05-fault-reverted")
    reverted_at = _until("its window closed", lambda: _window(driver, inject), 10)[1]
    _until("the TTFT line to fall", lambda: [
        v for t, v in _series(driver, "ttft_p95")
        if t >= reverted_at and v < base + 100 and v < max(peak) / 2], 15)
    shot("06-ttft-fallen")

    # the verdicts so far, then the final ones with the report
    _until("verdicts so far", lambda: driver.find_elements(
        By.CSS_SELECTOR, "#verdicts tbody tr[data-check]"), 15)
    _until("the final verdicts", lambda: driver.find_element(
        By.ID, "verdicts").get_attribute("data-final") == "true", RUN_TIME + 30)
    href = _until("the report link", lambda: driver.find_element(
        By.ID, "report-link").get_attribute("href"), 10)
    shown = _until("the verdicts read", lambda: {
        r.get_attribute("data-check"): r.get_attribute("data-verdict")
        for r in driver.find_elements(By.CSS_SELECTOR, "#verdicts tbody tr[data-check]")}, 10)
    shot("07-final-verdicts")
    report = httpx.get(href, timeout=10)
    assert report.status_code == 200 and "<html" in report.text.lower()
    assert set(shown) == {"slo", "recovery", "steady_state"}

    # the hand-driven session is in history.jsonl like a scheduled one, and judged the same
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    by_hand = {(x["f"], x["type"]) for x in history
               if x["f"] in ("inject", "revert") and x["value"].get("by") == "console"}
    assert by_hand == {("inject", "invoke"), ("inject", "ok"), ("revert", "invoke"),
                       ("revert", "ok")}
    out = io.StringIO()
    check_command(run_dir, None, tmp_path / "recheck", out=out)
    rechecked = {c["name"]: c["verdict"] for c in json.loads(
        (tmp_path / "recheck" / "checks.json").read_text())["checks"]}
    assert rechecked == shown, out.getvalue()
    assert shutil.disk_usage(shots).free > 0 and len(list(shots.glob("*.png"))) == 7
