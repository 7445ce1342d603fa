"""Fixtures of the load-generator tests: Locust in subprocesses, stopped by PID."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.launcher import ServerProcess

ROOT = Path(__file__).resolve().parents[3]
LOCUSTFILES = Path(__file__).resolve().parent / "locustfiles"
LOCUST = str(Path(sys.executable).with_name("locust"))


class LocustRun:
    """A finished Locust run: exit status, output and its run directory's records."""

    def __init__(self, code: int | None, output: str, run_dir: Path) -> None:
        self.code = code
        self.output = output
        self.run_dir = run_dir

    def records(self) -> list[dict[str, Any]]:
        path = self.run_dir / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


RunLocust = Callable[..., LocustRun]


def locust_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture
def run_locust(tmp_path: Path) -> Iterator[RunLocust]:
    """Run `locust ARGS` in its own process (Locust patches its process with gevent)."""
    started: list[ServerProcess] = []

    def run(*args: str, timeout: float = 120.0, run_dir: Path | None = None,
            name: str = "locust", prefix: Sequence[str] = (),
            env: dict[str, str] | None = None) -> LocustRun:
        run_dir = run_dir or tmp_path / f"run-{len(started)}"
        cmd = [*prefix, LOCUST, *args, "--run-dir", str(run_dir)]
        proc = ServerProcess(cmd, "", tmp_path / f"{name}-{len(started)}.log",
                             env=env if env is not None else locust_env())
        started.append(proc)
        try:
            code = proc.popen.wait(timeout=timeout)
        except Exception:
            proc.stop()
            raise
        proc.stop()
        return LocustRun(code, proc.log_path.read_text(errors="replace"), run_dir)

    yield run
    for proc in started:
        proc.stop()
