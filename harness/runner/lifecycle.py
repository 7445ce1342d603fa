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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from ..checks import load_run, run_checks
from ..endpoint import API_KEY_ENV
from ..errors import TargetError
from ..experiment import Experiment, LoadConfig, load_experiment
from ..faults import FaultInjector, JsonlRecorder
from ..faults.guard import RunGuard
from ..faults.injector import sigterm_raises
from ..launcher import ServerProcess, start_fleet
from ..loadgen.client import StreamClient
from ..machine import describe, one_line
from ..report import write_reports
from ..target import Target
from ..telemetry import Observer
from .capacity import ClientFactory, measure_capacity
from .faults import abort_conditions, build_steps
from .locust import LocustProcess
from .probes import run_probes
from .rundir import NEMESIS_FILE, fetch_events, merge_history, new_run_dir

__all__ = ["RunOutcome", "judge_run", "run_experiment", "write_plan"]

ADMIN_TOKEN_ENV = "LLM_CHAOS_ADMIN_TOKEN"  # as chaos_plan reads it (it imports this module)
MACHINE_FILE = "machine.json"
LOAD_START_TIMEOUT = 120.0
TARGET_READY_TIMEOUT = 600.0  # the first start of the real model converts its GGUF file


@dataclass
class RunOutcome:
    """What a run produced: its directory, the exit status and the overall verdict."""

    run_dir: Path
    exit_code: int
    verdict: str


class _Progress:
    """Prints one line every `interval` s: phase, elapsed, requests so far, errors, active
    faults (counted from the tail of history.jsonl, which Locust flushes twice a second)."""

    def __init__(self, run_dir: Path, out: TextIO, interval: float = 2.0) -> None:
        self.history = run_dir / "history.jsonl"
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
                       audit_log=run_dir / "audit.jsonl" if cfg.audit_log else None)


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


def _active_faults(injector: FaultInjector) -> list[str]:
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
    steps = build_steps(experiment)
    aborts = abort_conditions(experiment)
    run_dir = new_run_dir(experiment, report_dir)
    write_plan(experiment, run_dir)
    assert experiment.seed is not None  # load_experiment resolves it
    print(f"llm-chaos run: {experiment.name or path.name} seed {experiment.seed} -> {run_dir}",
          file=out, flush=True)
    progress = _Progress(run_dir, out, progress_interval)
    recorder = JsonlRecorder(run_dir / NEMESIS_FILE)
    inconclusive: str | None = None
    with sigterm_raises():
        try:
            inconclusive = _execute(experiment, run_dir, steps, aborts, recorder, progress, out,
                                    ui, ui_linger)
        except TargetError as exc:
            inconclusive = str(exc)
            print(f"llm-chaos run: the run could not complete: {exc}", file=out, flush=True)
        finally:
            progress.stop()
            merge_history(run_dir)
    progress.set("checks")
    return judge_run(experiment, run_dir, out, inconclusive)


def write_plan(experiment: Experiment, run_dir: Path) -> None:
    """Write the resolved experiment and its check config into `run_dir` (created), so
    `llm-chaos check RUN_DIR` re-judges the run the same way."""
    experiment.write_resolved(run_dir)
    (run_dir / "checks.yaml").write_text(
        yaml.safe_dump(experiment.checks.model_dump(mode="json"), sort_keys=False),
        encoding="utf-8")


def judge_run(experiment: Experiment, run_dir: Path, out: TextIO,
              inconclusive: str | None = None) -> RunOutcome:
    """Run the experiment's checks on `run_dir`, print the verdicts, write the reports; a run
    that could not complete (`inconclusive` says why) is at best unknown (exit 3)."""
    run = load_run(run_dir)
    result = run_checks(run, experiment.checks)
    width = max((len(c.name) for c in result.results), default=0)
    for check in result.results:
        print(f"  {check.verdict.value:<8} {check.name:<{width}}  {check.summary}", file=out)
    paths = write_reports(result, run_dir)
    print(f"  wrote {', '.join(p.name for p in paths)} to {run_dir}", file=out)
    code, verdict = result.exit_code, result.verdict.value
    if inconclusive is not None and code == 0:
        code, verdict = 3, "unknown"
    print(f"verdict: {verdict} (exit {code})", file=out, flush=True)
    return RunOutcome(run_dir, code, verdict)


def _execute(experiment: Experiment, run_dir: Path, steps: list[Any], aborts: list[Any],
             recorder: JsonlRecorder, progress: _Progress, out: TextIO,
             ui: tuple[str, int] | None = None, ui_linger: float = 60.0) -> str | None:
    cfg = experiment.target
    assert experiment.seed is not None
    with contextlib.ExitStack() as stack:
        # first in, last out: it stops what the callbacks below did not (and, if this process
        # is killed outright, its guard does)
        guard = stack.enter_context(RunGuard())
        server: ServerProcess | None = None
        if cfg.reference:
            # with the console, the operator enters the token: theirs, or one said once here
            token = cfg.admin_token or (os.environ.get(ADMIN_TOKEN_ENV) if ui else None) \
                or secrets.token_urlsafe(24)
            if ui and token not in (cfg.admin_token, os.environ.get(ADMIN_TOKEN_ENV)):
                print(f"  admin token for the console (this run only): {token}", file=out)
            progress.set("starting target")
            server = _start_target(experiment, run_dir, token)
            stack.callback(server.stop)
            guard.track(server.pid)
            server.wait_ready(timeout=TARGET_READY_TIMEOUT)
            url: str = server.url
            admin_token: str | None = token
        else:
            assert cfg.url is not None
            url, admin_token = cfg.url.rstrip("/"), cfg.admin_token
        tls = cfg.tls()
        target = stack.enter_context(Target(url, admin_token, verify=tls,
                                            pid=server.pid if server else None))
        if server is not None:
            target.wait_live(cfg.min_workers if cfg.min_workers is not None
                          else cfg.workers, TARGET_READY_TIMEOUT)
        described = _describe_machine(target, cfg.adapter == "reference" and bool(admin_token),
                                      run_dir)
        print(f"  {described}", file=out, flush=True)
        injector = FaultInjector(target, steps, seed=experiment.seed, recorder=recorder,
                                 blast_radius=experiment.nemesis.blast_radius, abort=aborts,
                                 state=guard.state)
        if steps:
            injector.validate()  # against the live target, before any load
        progress.active = lambda: _active_faults(injector)

        if ui is not None:
            return _run_with_console(experiment, run_dir, url, admin_token, ui, ui_linger,
                                     guard, stack, progress, out)
        progress.set("steady state before")
        before = run_probes(experiment.steady_state, "before", url, recorder,
                            headers=cfg.request_headers(), verify=tls)
        for name, ok in before:
            print(f"  probe {name}: {'ok' if ok else 'FAILED'} (before)", file=out)

        # before the observer: its figures, like the history, are of the run's own load
        load = _sized_load(experiment, url, run_dir, progress, out)

        if admin_token is not None:
            observer = Observer(url, admin_token, run_dir / "telemetry.jsonl",
                                interval=experiment.report.telemetry_interval, verify=tls,
                                router_pid=server.pid if server else None)
            stack.callback(observer.stop)
            observer.start()

        progress.set("starting load")
        locust = LocustProcess([*load.locust_args(experiment.seed), *cfg.endpoint_args(),
                                "--host", url, "--run-dir", str(run_dir), "--only-summary"],
                               run_dir / "locust.log", env=_load_env(experiment))
        stack.callback(locust.stop)
        guard.track(locust.pid)
        if not locust.wait_started(LOAD_START_TIMEOUT):
            raise TargetError(f"Locust did not start its load within {LOAD_START_TIMEOUT:.0f} s"
                              f" (log: {run_dir / 'locust.log'}):\n{locust.log_tail()}")
        progress.set("load + faults" if steps else "load")
        progress.start()
        duration = experiment.load.duration
        if steps and experiment.nemesis.dry_run:
            injector.dry_run(duration)
        if steps and not experiment.nemesis.dry_run:
            # stop the schedule early (everything reverted) if Locust dies before its time
            watch = threading.Thread(target=_stop_when_gone, args=(locust, injector),
                                     daemon=True)
            watch.start()
            result = injector.run(duration)  # reverts everything, also on Ctrl-C / SIGTERM
            for line in result.failed:
                print(f"  fault: {line}", file=out)
        progress.set("load ending")
        code = locust.wait(duration + 60.0)
        if code is None:
            raise TargetError(f"Locust did not end {duration + 60:.0f} s after its load "
                              "started")
        if code not in (0, 1):  # 1: some requests failed, which the checks judge
            raise TargetError(f"Locust exited with status {code}:\n{locust.log_tail()}")
        progress.stop()

        progress.set("steady state after")
        after = run_probes(experiment.steady_state, "after", url, recorder,
                           headers=cfg.request_headers(), verify=tls)
        for name, ok in after:
            print(f"  probe {name}: {'ok' if ok else 'FAILED'} (after)", file=out)
        if admin_token is not None and cfg.adapter == "reference":
            try:
                count = fetch_events(url, admin_token, run_dir / "events.jsonl")
                print(f"  {count} target event(s) -> events.jsonl", file=out)
            except (TargetError, httpx.HTTPError) as exc:
                print(f"  target events not fetched: {exc}", file=out)
        progress.set("stopping")
        return None


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


def _run_with_console(experiment: Experiment, run_dir: Path, url: str,
                      admin_token: str | None, ui: tuple[str, int], linger: float,
                      guard: RunGuard, stack: contextlib.ExitStack, progress: _Progress,
                      out: TextIO) -> str | None:
    """`llm-chaos run --ui`: Locust with its web UI, started at once (`--autostart`), runs the
    experiment as its `--chaos-plan` (probes, observer, schedule, checks: the session the
    game-day console shows and drives), and quits `linger` seconds after the end. What the
    run could not complete, or None."""
    load = _sized_load(experiment, url, run_dir, progress, out)
    assert experiment.seed is not None
    host, port = ui
    args = [a for a in load.locust_args(experiment.seed) if a != "--headless"]
    env = _load_env(experiment)
    if admin_token is not None:
        env[ADMIN_TOKEN_ENV] = admin_token  # never on a command line
    progress.set("starting load")
    locust = LocustProcess([*args, *experiment.target.endpoint_args(), "--host", url,
                            "--run-dir", str(run_dir), "--only-summary", "--autostart",
                            "--autoquit", f"{max(0, math.ceil(linger))}",
                            "--web-host", host, "--web-port", str(port),
                            "--chaos-plan", str(run_dir / "experiment.yaml")],
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


def _stop_when_gone(locust: LocustProcess, injector: FaultInjector) -> None:
    while locust.running():
        time.sleep(0.2)
    injector.stop()

