"""Shared fixtures: real worker processes on loopback ports chosen at run time, always stopped."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.errors import TargetError
from harness.launcher import ServerProcess, free_port, realtime_prefix, start_worker


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a non-interactive shell (`make test &`, a CI step
    # run that way) inherits SIGINT ignored, and so would every process a test starts: the
    # tests that press Ctrl-C on a run would wait for a signal never delivered. A handler of
    # our own is reset to the default in each child, where Python raises KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # the real model takes every core it is given
        if "smollm2" in item.keywords or "smollm2_worker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.solo)
    # the longest first (a stable sort keeps the rest in order): run two at a time, a phase
    # that ends on a minute-long test leaves the other core idle for that minute
    items.sort(key=lambda item: "long" not in item.keywords)
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


WorkerFactory = Callable[..., ServerProcess]

# Sim worker arguments for the worker-kill twins. With the default fixed TTFT and ITL every
# request of a closed-loop user lasts the same, so users spawned together run in lockstep, and
# about one kill in seven lands while all the victim's streams wait for their first token:
# the router retries them elsewhere and a twin without stream resumption passes. Jittered
# timings spread the users out, so a kill finds streams under way.
SIM_DEPHASED = ("--sim-ttft=uniform:0.03,0.07", "--sim-itl=uniform:0.006,0.014")


@pytest.fixture(scope="session", autouse=True)
def model_caches() -> dict[str, Path]:
    """Build what the suite reads from the model cache before any test runs, in any order: the
    SmolLM2 folder (its tokenizer counts tokens in every load run) and the tiny model folder.
    `.ci/run` points LLM_CHAOS_CACHE at a new empty folder, so a cold cache is what CI tests;
    on a warm cache this returns at once."""
    from targets.reference.models import ensure_smollm2_folder, ensure_tiny_folder

    return {"smollm2": ensure_smollm2_folder(), "tiny": ensure_tiny_folder()}


@pytest.fixture(scope="session")
def transformers_command() -> str:
    """The `transformers` console script of this environment (the dev extras install it)."""
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        pytest.fail(f"no {exe}: the dev extras install `transformers[serving]`; run `make install`")
    return str(exe)


@pytest.fixture(scope="module")
def transformers_serve(session_logs: Path, transformers_command: str,
                       model_caches: dict[str, Path]) -> Iterator[ServerProcess]:
    """`transformers serve` on the tiny model folder, offline, float32 on the CPU, for the
    modules that compare the harness or the target with it; stopped by PID."""
    import transformers

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = ServerProcess([transformers_command, "serve", str(model_caches["tiny"]), "--host",
                          "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype",
                          "float32"], f"http://127.0.0.1:{port}",
                         session_logs / f"transformers-{port}.log", env=env)
    try:
        try:
            proc.wait_ready(timeout=120)
        except TargetError as exc:
            pytest.fail(f"`transformers serve` {transformers.__version__} did not start: {exc}")
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start reference workers for one test; every one is stopped (by PID) at teardown."""
    started: list[ServerProcess] = []

    def factory(model: str = "sim", *args: str, timeout: float = 180.0) -> ServerProcess:
        proc = start_worker(model, args=args, log_dir=tmp_path)
        started.append(proc)
        proc.wait_ready(timeout=timeout)
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def session_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


def _session_worker(model: str, logs: Path, *args: str) -> Iterator[ServerProcess]:
    with start_worker(model, args=args, log_dir=logs) as proc:  # stopped however it ends
        proc.wait_ready(timeout=300)
        yield proc


@pytest.fixture
def timed_sim(tmp_path: Path) -> Iterator[tuple[ServerProcess, list[str]]]:
    """A simulated engine (TTFT 50 ms, ITL 10 ms) of the test's own, at real-time priority
    where allowed (`launcher.realtime_prefix`); with the prefix it was started under."""
    prefix = realtime_prefix()
    with start_worker("sim", args=["--sim-ttft", "0.05", "--sim-itl", "0.01"],
                      log_dir=tmp_path, prefix=prefix) as proc:
        proc.wait_ready(timeout=60)
        yield proc, prefix


@pytest.fixture(scope="session")
def smollm2_worker(session_logs: Path) -> Iterator[ServerProcess]:
    """One SmolLM2 worker shared by the session (loading it costs seconds)."""
    yield from _session_worker("smollm2", session_logs)


@pytest.fixture(scope="session")
def tiny_worker(session_logs: Path) -> Iterator[ServerProcess]:
    """One tiny random-Llama worker shared by the session, in float32 so that its greedy output
    equals a plain transformers forward pass token for token."""
    yield from _session_worker("tiny", session_logs, "--dtype", "float32")


@pytest.fixture(scope="session")
def sim_worker(session_logs: Path) -> Iterator[ServerProcess]:
    """One simulated-engine worker (TTFT 50 ms, ITL 10 ms) shared by the session."""
    yield from _session_worker("sim", session_logs, "--sim-ttft", "0.05", "--sim-itl", "0.01")


def sse_events(resp: httpx.Response) -> list[Any]:
    """The `data:` payloads of an SSE response, JSON-decoded except the `[DONE]` marker."""
    events: list[Any] = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
