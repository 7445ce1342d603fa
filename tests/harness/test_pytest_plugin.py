"""The pytest plugin (entry point `pytest11`) as a user meets it: a test file in a fresh pytest
session uses `reference_target` and `chaos_run`; the worker-kill game day passes against the
fleet, fails (reported as a test failure naming the check) against a weakened one, a bad
experiment gives exit code 2, and the fleet is stopped after the test."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ..conftest import SIM_DEPHASED

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
GAMEDAY = ROOT / "scenarios" / "gameday_worker_kill.yaml"
INNER_TIMEOUT = 85.0
# the fleet's sim workers with jittered timings (see SIM_DEPHASED), as `serve` arguments
TARGET_ARGS = [f"--worker-arg={arg}" for arg in SIM_DEPHASED]

USER_TEST = f'''
import json
import sys
from pathlib import Path

import pytest

GAMEDAY = {str(GAMEDAY)!r}
FAST = {{"load.duration": 18, "faults[0].at": 7, "faults[0].for": 3,
        "load.locustfile": [{str(ROOT / "scenarios" / "chat_qa.py")!r}]}}


def _note(target):
    Path("fleet.json").write_text(json.dumps({{"pid": target.pid, "url": target.url}}))


MARK
def test_worker_kill(reference_target, chaos_run):
    _note(reference_target)
    result = chaos_run(GAMEDAY, set=FAST, against=reference_target)
    assert result.run_dir is not None and (result.run_dir / "report.html").is_file()
    assert set(result.verdicts) == {{"slo", "recovery", "audit", "steady_state"}}
    result.assert_valid()
    # the harness's own process never imports Locust (it patches everything with gevent)
    assert "locust" not in sys.modules and "gevent" not in sys.modules
'''


@pytest.fixture
def fleet_cleanup(pytester: pytest.Pytester) -> Iterator[Path]:
    """The fleet's PID as the inner test noted it: stopped here if the inner session died
    without stopping it (it must not, and the test says so)."""
    note = pytester.path / "fleet.json"
    yield note
    if note.exists():
        pid = json.loads(note.read_text())["pid"]
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if "targets.reference" in " ".join(proc.cmdline()):
                for child in [*proc.children(recursive=True), proc]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()


def _fleet_stopped(note: Path) -> None:
    pid = json.loads(note.read_text())["pid"]
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert not alive, f"the reference_target fleet (pid {pid}) outlived its test"


@pytest.mark.long
@pytest.mark.parametrize(("mark_args", "options", "outcome", "lines"), [
    pytest.param("", ("-s",), {"passed": 1},
                 ["*valid*recovery*", "*verdict: valid (exit 0)*"], id="passes"),
    # no stream resumption: the streams on the killed worker fail, the recovery check too
    pytest.param("resume_streams=False, ", ("--strict-markers",), {"failed": 1},
                 ["*resilience test failed: verdict invalid (exit 1)*recovery invalid*"],
                 id="weakened-fails"),
])
def test_resilience_test_against_the_reference_target(
        pytester: pytest.Pytester, fleet_cleanup: Path, mark_args: str, options: tuple[str, ...],
        outcome: dict[str, int], lines: list[str]) -> None:
    pytester.makepyfile(test_user=USER_TEST.replace(
        "MARK", f"@pytest.mark.llm_chaos_target({mark_args}args={TARGET_ARGS!r})"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *options,
                                           timeout=INNER_TIMEOUT)
    result.assert_outcomes(**outcome)
    result.stdout.fnmatch_lines(lines)
    _fleet_stopped(fleet_cleanup)


def test_fixtures_and_options_are_registered_and_a_bad_experiment_exits_2(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad='''
def test_bad(chaos_run, tmp_path):
    result = chaos_run({"target": {"model": "sim"}, "load": {"users": "many", "duration": 5}})
    assert result.exit_code == 2 and not result.ok
    assert "load.users" in result.output
    assert result.run_dir is None
    good = {"target": {"model": "sim"}, "load": {"duration": 5}}
    result = chaos_run(good, against="http://127.0.0.1:9/v1", headers={"Bad Name": "x"})
    assert result.exit_code == 2 and "target.headers" in result.output
    result = chaos_run(good, against="http://127.0.0.1:9", api_key_env="LLM_CHAOS_UNSET_KEY")
    assert result.exit_code == 2 and "LLM_CHAOS_UNSET_KEY is not set" in result.output
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=1)
    listed = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider",
                                           timeout=INNER_TIMEOUT)
    listed.stdout.fnmatch_lines(["*reference_target*", "*chaos_run*"])
    helped = pytester.runpytest_subprocess("--help", timeout=INNER_TIMEOUT)
    helped.stdout.fnmatch_lines(["*--llm-chaos-model*"])
