"""One experiment end to end, Chaos Toolkit's lifecycle with Jepsen's roles:

validate (exit 2) -> run directory with the resolved experiment -> start the reference target
(when the experiment names it) -> the machine (and each worker's dtype and torch threads) printed
and kept in `machine.json` -> steady state before -> with `load.users: auto`, the target's
capacity measured and the users sized from it (`capacity.json`; experiment.yaml rewritten with
them) -> observer, Locust and the fault schedule (relative to the load's start) -> every
fault reverted however the run ends -> steady state after -> target events and audit log into
the run directory -> checks -> report.

Every process it starts is stopped by PID on every path (normal end, error, Ctrl-C, SIGTERM),
and noted in the run's fault state file first: if the harness itself is killed (SIGKILL), its
guard heals the faults and stops the target and Locust (`faults.guard.RunGuard`).
The injector and the probes record into `nemesis.jsonl` while Locust writes `history.jsonl`
(two processes appending to one file could interleave a large batch); the harness's lines are
merged into `history.jsonl` once Locust has exited, so the checks read one history.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from ..endpoint import ADMIN_TOKEN_ENV, API_KEY_ENV
from ..errors import TargetError
from ..experiment import Experiment, LoadConfig, load_experiment
from ..faults.guard import RunGuard
from ..faults.injector import sigterm_raises
from ..launcher import ServerProcess, start_fleet
from ..loadgen.client import StreamClient
from ..machine import describe, one_line
from ..target import Target
from .capacity import ClientFactory, measure_capacity
from .locust import LocustProcess
from .rundir import AUDIT_FILE, EXPERIMENT_FILE, HISTORY_FILE, new_run_dir
from .session import RunOutcome, Session, write_plan

__all__ = ["RunOutcome", "run_experiment"]

MACHINE_FILE = "machine.json"
LOAD_START_TIMEOUT = 120.0
TARGET_READY_TIMEOUT = 600.0  # the first start of the real model converts its GGUF file


class _Progress:
    """Prints one line every `interval` s: phase, elapsed, requests so far, errors, active
    faults (counted from the tail of history.jsonl, which Locust flushes twice a second)."""

    def __init__(self, run_dir: Path, out: TextIO, interval: float = 2.0) -> None:
        self.history = run_dir / HISTORY_FILE
        self.out = out
        self.interval = interval
        self.phase = "starting"
        self.t0 = time.monotonic()
        self.requests = 0
        self.errors = 0
        self.active: Callable[[], list[str]] = list
        self._offset = 0
        self._rest = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, phase: str) -> None:
        self.phase = phase
        self.line()

    def _count(self) -> None:
        try:
            with open(self.history, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for raw in lines:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            value = line.get("value") if isinstance(line, dict) else None
            if isinstance(value, dict) and line.get("f", "chat") == "chat":
                self.requests += 1
                if value.get("status") not in ("ok", "interrupted"):
                    self.errors += 1

    def line(self) -> None:
        self._count()
        try:
            active = ", ".join(self.active()) or "none"
        except Exception:  # a progress line must never break the run
            active = "?"
        print(f"[{time.monotonic() - self.t0:6.1f}s] {self.phase:<20} requests {self.requests:>5}"
              f"  errors {self.errors:>4}  active faults: {active}", file=self.out, flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.line()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llm-chaos-progress",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _start_target(experiment: Experiment, run_dir: Path, token: str) -> ServerProcess:
    cfg = experiment.target
    # the audit log is written straight into the run directory: the run's audit.jsonl is the
    # target's log
    return start_fleet(*cfg.serve_args(), log_path=run_dir / "target.log",
                       worker_logs=run_dir / "target-logs", admin_token=token,
                       audit_log=run_dir / AUDIT_FILE if cfg.audit_log else None)


def _load_env(experiment: Experiment) -> dict[str, str]:
    """Locust's environment: the API key in $OPENAI_API_KEY when the experiment names one, and
    no key otherwise (a key in this shell is not sent where the experiment did not ask)."""
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    key = experiment.target.api_key()
    if key is not None:
        env[API_KEY_ENV] = key
    return env


def _clients(experiment: Experiment) -> ClientFactory:
    """Stream clients with the experiment's headers, API key and TLS settings."""
    cfg = experiment.target
    key, tls = cfg.api_key(), cfg.tls()
    return lambda url, timeout: StreamClient(url, timeout=timeout, headers=cfg.headers,
                                             api_key=key, tls=tls)


def _worker_engines(target: Target) -> list[dict[str, Any]]:
    """Each live worker's dtype and torch threads as its `/debug/engine` reports them (None
    where it does not say: the simulated engine has no dtype)."""
    if not target.is_local():
        # the reference target's workers listen on its loopback only
        raise TargetError(f"the target {target.url} is not on this machine")
    engines = []
    with httpx.Client(timeout=5.0) as client:
        for worker in target.workers():
            if worker.state != "live":
                continue
            resp = client.get(f"http://127.0.0.1:{worker.port}/debug/engine")
            resp.raise_for_status()
            stats = resp.json()
            engines.append({"id": worker.id, "dtype": stats.get("dtype"),
                            "threads": stats.get("threads")})
    return engines


def _describe_machine(target: Target, reference: bool, run_dir: Path) -> str:
    """Write `machine.json` (this machine, and the reference target's workers) into `run_dir`
    and return the line naming them; a worker that cannot be described is said, never raised."""
    machine = describe()
    line = f"machine: {one_line(machine)}"
    if reference:
        try:
            engines = _worker_engines(target)
        except Exception as exc:  # the line only informs: it must never fail the run
            machine["workers_error"] = str(exc) or type(exc).__name__
            line += f" (workers not described: {machine['workers_error']})"
        else:
            machine["workers"] = engines
            line += "; workers: " + ", ".join(
                f"{e['id']} {e['dtype'] or 'dtype ?'} threads "
                f"{e['threads'] if isinstance(e['threads'], int) else '?'}" for e in engines)
    (run_dir / MACHINE_FILE).write_text(json.dumps(machine, indent=2) + "\n", encoding="utf-8")
    return line


def _active_faults(session: Session) -> list[str]:
    injector = session.injector
    if injector is None:
        return []
    return [a.fault.name + (f" ({', '.join(sorted(a.effect.workers))})"
                            if a.effect.workers else "") for a in list(injector.active)]


def run_experiment(path: Path, overrides: Sequence[str] = (), *,
                   report_dir: Path | None = None, out: TextIO | None = None,
                   progress_interval: float = 2.0, ui: tuple[str, int] | None = None,
                   ui_linger: float = 60.0) -> RunOutcome:
    """Run the experiment in `path` (with `--set` overrides) and judge it. Raises UsageError on
    a bad experiment before anything starts; KeyboardInterrupt / Terminated after cleaning up.
    With `ui` (host, port), Locust runs with its web UI and the game-day console there, and
    the faults, probes and observer run inside it (`--chaos-plan`, the same session); the
    console stays up `ui_linger` seconds after the end."""
    out = out or sys.stdout
    experiment = load_experiment(path, overrides)
    experiment.target.api_key()  # an unset api_key_env is a usage error, before anything starts
    experiment.target.check_tls()
    run_dir = new_run_dir(experiment, report_dir)
    progress = _Progress(run_dir, out, progress_interval)
    # the progress line names the session's phase as it begins
    session = Session(experiment, run_dir, out=out, prefix="llm-chaos run: ", handlers=[
        lambda phase: progress.set("load + faults" if phase == "faults" else phase)])
    write_plan(experiment, run_dir)
    print(f"llm-chaos run: {experiment.name or path.name} seed {session.seed} -> {run_dir}",
          file=out, flush=True)
    progress.active = lambda: _active_faults(session)
    with sigterm_raises():
        try:
            _execute(session, progress, ui, ui_linger)
        except TargetError as exc:  # judged at best unknown (the judge says why)
            session.problems.append(str(exc))
        finally:
            progress.stop()
            session.close()
    return session.judge()


def _execute(session: Session, progress: _Progress, ui: tuple[str, int] | None = None,
             ui_linger: float = 60.0) -> None:
    """The run of `llm-chaos run`: the target (started here when the experiment names the
    reference target), the session's phases, and Locust for the load; with `ui`, Locust runs
    the phases after `prepare` as its `--chaos-plan`."""
    experiment, run_dir, out = session.experiment, session.run_dir, session.out
    cfg = experiment.target
    with contextlib.ExitStack() as stack:
        # first in, last out: it stops what the callbacks below did not (and, if this process
        # is killed outright, its guard does)
        guard = stack.enter_context(RunGuard())
        server, url, admin_token = _target(experiment, run_dir, guard, stack, progress,
                                           console=ui is not None)
        stack.callback(session.close)
        live = None if server is None else \
            cfg.min_workers if cfg.min_workers is not None else cfg.workers
        target = session.prepare(url, admin_token, headers=cfg.request_headers(),
                                 verify=cfg.tls(), router_pid=server.pid if server else None,
                                 state=guard.state, reference=cfg.adapter == "reference",
                                 live=live, live_timeout=TARGET_READY_TIMEOUT)
        described = _describe_machine(target, cfg.adapter == "reference" and bool(admin_token),
                                      run_dir)
        print(f"  {described}", file=out, flush=True)
        if ui is not None:
            problem = _run_with_console(session, url, admin_token, ui, ui_linger, guard, stack,
                                        progress)
            if problem is not None:
                session.problems.append(problem)
            return
        session.steady_state("before")

        # before the observer: its figures, like the history, are of the run's own load
        load = _sized_load(experiment, url, run_dir, progress, out)
        session.observe()

        progress.set("starting load")
        locust = LocustProcess([*load.locust_args(session.seed), *cfg.endpoint_args(),
                                "--host", url, "--run-dir", str(run_dir), "--only-summary"],
                               run_dir / "locust.log", env=_load_env(experiment))
        stack.callback(locust.stop)
        guard.track(locust.pid)
        if not locust.wait_started(LOAD_START_TIMEOUT):
            raise TargetError(f"Locust did not start its load within {LOAD_START_TIMEOUT:.0f} s"
                              f" (log: {run_dir / 'locust.log'}):\n{locust.log_tail()}")
        if not session.steps:
            progress.set("load")
        progress.start()
        duration = experiment.load.duration
        if session.steps:
            # stop the schedule early (everything reverted) if Locust dies before its time
            watch = threading.Thread(target=_stop_when_gone, args=(locust, session),
                                     daemon=True)
            watch.start()
            session.run_faults(duration)  # reverts everything, also on Ctrl-C / SIGTERM
        progress.set("load ending")
        code = locust.wait(duration + 60.0)
        if code is None:
            raise TargetError(f"Locust did not end {duration + 60:.0f} s after its load "
                              "started")
        if code not in (0, 1):  # 1: some requests failed, which the checks judge
            raise TargetError(f"Locust exited with status {code}:\n{locust.log_tail()}")
        progress.stop()
        session.wind_down(duration)
        progress.set("stopping")


def _target(experiment: Experiment, run_dir: Path, guard: RunGuard, stack: contextlib.ExitStack,
            progress: _Progress, console: bool) -> tuple[ServerProcess | None, str, str | None]:
    """The target to run against: the reference target started here (stopped with `stack`),
    or the experiment's URL. (its process or None, its URL, the admin token)"""
    cfg = experiment.target
    if not cfg.reference:
        assert cfg.url is not None
        return None, cfg.url.rstrip("/"), cfg.admin_token
    # with the console, the operator enters the token: theirs, or one said once here
    token = cfg.admin_token or (os.environ.get(ADMIN_TOKEN_ENV) if console else None) \
        or secrets.token_urlsafe(24)
    if console and token not in (cfg.admin_token, os.environ.get(ADMIN_TOKEN_ENV)):
        print(f"  admin token for the console (this run only): {token}", file=progress.out)
    progress.set("starting target")
    server = _start_target(experiment, run_dir, token)
    stack.callback(server.stop)
    guard.track(server.pid)
    server.wait_ready(timeout=TARGET_READY_TIMEOUT)
    return server, server.url, token


def _sized_load(experiment: Experiment, url: str, run_dir: Path, progress: _Progress,
                out: TextIO) -> LoadConfig:
    """The experiment's load, its users measured from the target's capacity when it says
    `users: auto`; experiment.yaml then says the users the load ran (capacity.json why)."""
    load = experiment.load
    if load.auto_users:
        progress.set("measuring capacity")
        capacity = measure_capacity(url, load, client=_clients(experiment))
        capacity.write(run_dir)
        print(f"  {capacity.line()}", file=out, flush=True)
        load = load.sized(capacity.users)
        write_plan(experiment.model_copy(update={"load": load}), run_dir)
    return load


def _run_with_console(session: Session, url: str, admin_token: str | None,
                      ui: tuple[str, int], linger: float, guard: RunGuard,
                      stack: contextlib.ExitStack, progress: _Progress) -> str | None:
    """`llm-chaos run --ui`: Locust with its web UI, started at once (`--autostart`), runs the
    experiment as its `--chaos-plan` (probes, observer, schedule, checks: the session the
    game-day console shows and drives), and quits `linger` seconds after the end. What the
    run could not complete, or None."""
    experiment, run_dir, out = session.experiment, session.run_dir, session.out
    load = _sized_load(experiment, url, run_dir, progress, out)
    host, port = ui
    args = [a for a in load.locust_args(session.seed) if a != "--headless"]
    env = _load_env(experiment)
    if admin_token is not None:
        env[ADMIN_TOKEN_ENV] = admin_token  # never on a command line
    progress.set("starting load")
    locust = LocustProcess([*args, *experiment.target.endpoint_args(), "--host", url,
                            "--run-dir", str(run_dir), "--only-summary", "--autostart",
                            "--autoquit", f"{max(0, math.ceil(linger))}",
                            "--web-host", host, "--web-port", str(port),
                            "--chaos-plan", str(run_dir / EXPERIMENT_FILE)],
                           run_dir / "locust.log", env=env)
    stack.callback(locust.stop)
    guard.track(locust.pid)
    if not locust.wait_started(LOAD_START_TIMEOUT):
        raise TargetError(f"Locust did not start its load within {LOAD_START_TIMEOUT:.0f} s"
                          f" (log: {run_dir / 'locust.log'}):\n{locust.log_tail()}")
    shown = "127.0.0.1" if host in ("", "*", "0.0.0.0") else host
    print(f"  game-day console: http://{shown}:{port}/?tab=chaos (open until {linger:g} s "
          "after the end)", file=out, flush=True)
    progress.set("load + faults (console)")
    progress.start()
    code = locust.wait(load.duration + linger + 120.0)
    if code is None:
        raise TargetError(f"Locust did not end {load.duration + linger + 120:.0f} s after its "
                          "load started")
    progress.stop()
    if code == 3:  # the session judged the run unknown, or could not complete it
        return f"the console's session ended inconclusive (see {run_dir / 'locust.log'})"
    if code not in (0, 1):
        raise TargetError(f"Locust exited with status {code}:\n{locust.log_tail()}")
    return None


def _stop_when_gone(locust: LocustProcess, session: Session) -> None:
    while locust.running():
        time.sleep(0.2)
    if session.injector is not None:
        session.injector.stop()
