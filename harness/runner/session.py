"""One run of an experiment against a live target, in named phases: the lifecycle that
`llm-chaos run` and Locust's `--chaos-plan` (and through them the pytest plugin, `llm-chaos
explore` and the game-day console) share. Chaos Toolkit's runner is the model: the phases in
order, and handlers told as each one begins.

    prepare             the target's admin API, the fault schedule checked against it
    steady state before the experiment's probes
    load                (the caller's: Locust, started by `llm-chaos run` or already running)
    faults              the schedule beside the load (`run_faults`, blocking: a thread of
                        `llm-chaos run`, a greenlet in Locust), and the observer
    revert              the schedule stopped where it is, every fault it left reverted
    steady state after  the probes again
    collect             observer stopped, the target's events and audit log into the run
                        directory, the harness's history lines merged into history.jsonl
    judge               the checks, printed, and the reports written (`judge_run`)

What the run could not complete (a schedule that failed, a test stopped before its last
injection, a target that went away) is kept in `problems` and makes the verdict at best
unknown. Starting and stopping processes stays with the callers: the session runs against a
URL.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import yaml

from ..checks import load_run, run_checks
from ..errors import HarnessError, TargetError
from ..experiment import Experiment
from ..faults import FaultInjector, JsonlRecorder
from ..faults.state import StateFile
from ..report import print_verdicts
from ..target import Target
from ..telemetry import Observer
from .faults import abort_conditions, build_steps
from .probes import run_probes
from .rundir import (
    CHECKS_CONFIG_FILE,
    EVENTS_FILE,
    NEMESIS_FILE,
    TELEMETRY_FILE,
    copy_audit_log,
    fetch_events,
    merge_history,
)

__all__ = ["PHASES", "RunOutcome", "Session", "judge_run", "write_plan"]

log = logging.getLogger("llm_chaos.session")

PHASES = ("prepare", "steady state before", "load", "faults", "revert", "steady state after",
          "collect", "judge")

Handler = Callable[[str], None]


@dataclass
class RunOutcome:
    """What a run produced: its directory, the exit status and the overall verdict."""

    run_dir: Path
    exit_code: int
    verdict: str


def write_plan(experiment: Experiment, run_dir: Path) -> None:
    """Write the resolved experiment and its check config into `run_dir` (created), so
    `llm-chaos check RUN_DIR` re-judges the run the same way."""
    experiment.write_resolved(run_dir)
    (run_dir / CHECKS_CONFIG_FILE).write_text(
        yaml.safe_dump(experiment.checks.model_dump(mode="json"), sort_keys=False),
        encoding="utf-8")


def judge_run(experiment: Experiment, run_dir: Path, out: TextIO,
              inconclusive: str | None = None) -> RunOutcome:
    """Run the experiment's checks on `run_dir`, print the verdicts, write the reports; a run
    that could not complete (`inconclusive` says why) is at best unknown (exit 3)."""
    run = load_run(run_dir)
    result = run_checks(run, experiment.checks)
    print_verdicts(result, run_dir, out, experiment.report.formats)
    code, verdict = result.exit_code, result.verdict.value
    if inconclusive is not None and code == 0:
        code, verdict = 3, "unknown"
    print(f"verdict: {verdict} (exit {code})", file=out, flush=True)
    return RunOutcome(run_dir, code, verdict)


class Session:
    """One experiment, run into `run_dir`, from `prepare` to `judge`. `handlers` are told as
    each phase begins; lines go to `out` (those of its own, not indented, after `prefix`);
    `audit_log` is a target's log to copy in at the end, where the target does not write
    its log into the run directory itself."""

    def __init__(self, experiment: Experiment, run_dir: Path, *, out: TextIO,
                 prefix: str = "llm-chaos: ", handlers: Sequence[Handler] = (),
                 audit_log: Path | None = None) -> None:
        self.experiment = experiment
        self.run_dir = run_dir
        self.out = out
        self.prefix = prefix
        self.handlers = list(handlers)
        self.audit_log = audit_log
        # a bad schedule or abort condition is a UsageError here, before anything is written
        self.steps = build_steps(experiment)
        self.aborts = abort_conditions(experiment)
        self.recorder = JsonlRecorder(run_dir / NEMESIS_FILE)
        self.url = ""
        self.admin_token: str | None = None
        self.headers: dict[str, str] = {}
        self.verify: ssl.SSLContext | None = None
        self.router_pid: int | None = None
        self.fetch_target_events = False
        self.target: Target | None = None
        self.injector: FaultInjector | None = None
        self.observer: Observer | None = None
        self.faults_started: float | None = None  # time.monotonic() at the schedule's start
        self.problems: list[str] = []
        self.outcome: RunOutcome | None = None
        self._closed = False

    @property
    def seed(self) -> int:
        assert self.experiment.seed is not None  # load_experiment resolves it
        return self.experiment.seed

    def phase(self, name: str) -> None:
        """Tell the handlers that `name` (one of PHASES, or a caller's own) begins."""
        for handler in self.handlers:
            try:
                handler(name)
            except Exception:  # a handler informs; it never breaks the run
                log.exception("llm-chaos: a session handler failed at %s", name)

    def say(self, line: str) -> None:
        print(line if line.startswith(" ") else self.prefix + line, file=self.out, flush=True)

    # -- before the load --------------------------------------------------------------------

    def prepare(self, url: str, admin_token: str | None, *,
                headers: Mapping[str, str] | None = None, verify: ssl.SSLContext | None = None,
                router_pid: int | None = None, state: StateFile | None = None,
                reference: bool = False, live: int | None = None,
                live_timeout: float = 600.0) -> Target:
        """Reach the target at `url` and check the fault schedule against it (UsageError /
        TargetError when it cannot take it), before any load. `headers` and `verify`: how the
        load reaches it (its API key, its TLS settings), as the probes will; `router_pid`: the
        reference target's router when this machine started it (the observer reads its
        memory); `state`: the run guard's fault state file (`faults.guard`); `reference`: the
        reference target, whose events are fetched at the end; `live`: the workers to wait
        for (up to `live_timeout` s) before the faults are checked against them."""
        self.phase("prepare")
        self.url, self.admin_token = url.rstrip("/"), admin_token
        self.headers, self.verify, self.router_pid = dict(headers or {}), verify, router_pid
        self.fetch_target_events = reference and admin_token is not None
        self.target = Target(self.url, admin_token, verify=verify, pid=router_pid)
        self.injector = FaultInjector(self.target, self.steps, seed=self.seed,
                                      recorder=self.recorder,
                                      blast_radius=self.experiment.nemesis.blast_radius,
                                      abort=self.aborts, state=state)
        if live is not None:
            self.target.wait_live(live, live_timeout)
        if self.steps:
            self.injector.validate()
        return self.target

    def steady_state(self, when: str) -> list[tuple[str, bool]]:
        """Run the experiment's probes (`when`: before or after), each one said."""
        self.phase(f"steady state {when}")
        results = run_probes(self.experiment.steady_state, when, self.url, self.recorder,
                             headers=self.headers, verify=self.verify)
        for name, ok in results:
            self.say(f"  probe {name}: {'ok' if ok else 'FAILED'} ({when})")
        return results

    def observe(self) -> None:
        """Start the observer (the target's metrics and workers into telemetry.jsonl), where
        the admin API is open to this run."""
        if self.admin_token is None or self.observer is not None:
            return
        self.observer = Observer(self.url, self.admin_token, self.run_dir / TELEMETRY_FILE,
                                 interval=self.experiment.report.telemetry_interval,
                                 verify=self.verify, router_pid=self.router_pid)
        self.observer.start()

    # -- beside the load --------------------------------------------------------------------

    def run_faults(self, horizon: float) -> None:
        """The fault schedule for `horizon` seconds from now (blocking), everything reverted
        however it ends; with `nemesis.dry_run`, only recorded. A schedule that fails makes the
        run inconclusive; Ctrl-C and SIGTERM propagate (after the reverts)."""
        assert self.injector is not None, "prepare() first"
        self.phase("faults")
        self.faults_started = time.monotonic()
        try:
            if self.experiment.nemesis.dry_run:
                self.injector.dry_run(horizon)
                return
            result = self.injector.run(horizon)
        except HarnessError as exc:
            self.problems.append(f"fault schedule: {exc}")
            return
        except Exception as exc:  # judged inconclusive, never a pass
            log.exception("llm-chaos: the fault schedule failed")
            self.problems.append(f"fault schedule: {type(exc).__name__}: {exc}")
            return
        for line in result.failed:
            self.say(f"  fault: {line}")
        if result.aborted:
            self.say(f"  fault schedule aborted: {result.aborted}")

    def stop_faults(self, horizon: float) -> None:
        """The load ended: a schedule still running is told to stop, and the injections it
        will now never make (before `horizon`) make the run inconclusive."""
        if self.injector is None:
            return
        if self.injector.running and self.faults_started is not None \
                and not self.experiment.nemesis.dry_run:
            elapsed = time.monotonic() - self.faults_started
            skipped = [t for t, _ in self.injector.plan(horizon) if t > elapsed]
            if skipped:
                self.problems.append(
                    f"the test stopped {elapsed:.1f} s after its start, before {len(skipped)} "
                    f"scheduled injection(s) (the first at {skipped[0]:g} s)")
        self.injector.stop()

    def revert(self) -> None:
        """Every fault still active reverted (the schedule reverts its own as it ends: this
        is for what it left, or what was injected by hand after it)."""
        self.phase("revert")
        if self.injector is not None:
            self.injector.revert_all()

    # -- after the load ---------------------------------------------------------------------

    def wind_down(self, horizon: float, join: Callable[[], None] | None = None,
                  flush: Callable[[], None] | None = None) -> None:
        """The load has ended: the schedule stopped (`join` waits for the thread or greenlet
        running it), every fault reverted, steady state after, collect; then, however that
        went, `flush` (the load's own records) and `close`."""
        try:
            self.stop_faults(horizon)
            if join is not None:
                join()
            self.revert()
            self.steady_state("after")
            self.collect()
        finally:
            if flush is not None:
                flush()
            self.close()

    def collect(self) -> None:
        """The target's events and audit log into the run directory."""
        self.phase("collect")
        self._stop_observer()
        if self.fetch_target_events:
            assert self.admin_token is not None
            try:
                count = fetch_events(self.url, self.admin_token, self.run_dir / EVENTS_FILE)
                self.say(f"  {count} target event(s) -> events.jsonl")
            except (TargetError, httpx.HTTPError) as exc:
                self.say(f"  target events not fetched: {exc}")
        if self.audit_log is not None:
            count = copy_audit_log(self.audit_log, self.run_dir)
            self.say(f"  {count} audit log file(s) from {self.audit_log}" if count
                     else f"  no audit log at {self.audit_log}")

    def close(self) -> None:
        """Observer stopped, the admin client closed, the harness's history lines merged into
        history.jsonl (call it once the load's own writer has flushed). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_observer()
            if self.target is not None:
                self.target.close()
        finally:
            merge_history(self.run_dir)

    def judge(self) -> RunOutcome:
        """The checks, the verdicts printed and the reports written; the run's problems make
        it at best unknown. Idempotent: a second call returns the first outcome."""
        if self.outcome is None:
            self.phase("judge")
            self.close()
            inconclusive = "; ".join(self.problems) or None
            if inconclusive:
                self.say(f"the run could not complete: {inconclusive}")
            self.outcome = judge_run(self.experiment, self.run_dir, self.out, inconclusive)
        return self.outcome

    def _stop_observer(self) -> None:
        if self.observer is not None:
            self.observer.stop()
