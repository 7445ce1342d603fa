"""`locust -f scenarios/ --chaos-plan EXP.yaml --host URL`: an experiment run inside Locust.

The same lifecycle as `llm-chaos run`, with Locust owning the load and the target already
running at `--host` (which overrides the experiment's `target.url`; a plan that names the
reference target is then taken to be one already running there):

- init (master or local process): the plan is validated; a bad file, a fault after the end of
  `-t`, or admin-API faults without an admin token end Locust with exit 2 and the field named.
  The run directory (`--run-dir`, else `report.dir`/<run-id>) gets the resolved experiment.
- test start: the faults are checked against the live target (refused: exit 2), steady-state
  probes run, the observer starts, and the fault schedule runs beside the load, its times
  relative to the test start, for `-t` (else the plan's `load.duration`).
- test stop, or quitting (the end of `-t`, the web UI's stop, Ctrl-C, SIGTERM): every fault is
  reverted, probes run again, the target's events are fetched, the checks judge the run
  directory, the reports are written and Locust's exit code becomes the verdict's: 0 valid,
  1 invalid, 3 unknown or incomplete. The plan runs once per Locust process.

Only Locust's process runs this module's listeners; it imports gevent and Locust only there, so
`copy_audit_log` and `load_plan` are safe to use anywhere.

The admin token comes from the plan's `target.admin_token` or `$LLM_CHAOS_ADMIN_TOKEN`.
Network faults act on the Toxiproxy-compatible proxy their `api` names; this plugin starts no
proxy: run one in front of the deployment (`llm-chaos proxy`, or a real Toxiproxy) and point
`--host` at its listen address. A proxy API that does not answer refuses the plan at test start.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx

from ..endpoint import auth_headers
from ..errors import HarnessError, TargetError, UsageError
from ..experiment import (
    AdminFaultSpec,
    Experiment,
    ProcessFaultSpec,
    TargetConfig,
    load_experiment,
)
from ..faults import FaultInjector, JsonlRecorder
from ..runner.faults import abort_conditions, build_steps
from ..runner.lifecycle import RunOutcome, judge_run, write_plan
from ..runner.probes import run_probes
from ..runner.rundir import NEMESIS_FILE, fetch_events, merge_history, new_run_dir
from ..target import Target
from ..telemetry import Observer

__all__ = ["ADMIN_TOKEN_ENV", "ChaosPlan", "ChaosSession", "LoadState", "add_options",
           "copy_audit_log", "install", "load_plan", "on_init"]

log = logging.getLogger("llm_chaos.chaos_plan")

ADMIN_TOKEN_ENV = "LLM_CHAOS_ADMIN_TOKEN"
SCHEDULE_GRACE = 60.0  # seconds a stopped schedule gets to revert its faults


class LoadState(Protocol):
    """What a chaos plan reads of the loadgen plugin's state (`plugin.LoadgenState`): how the
    load reaches the target, and its request records to flush before the checks."""

    @property
    def headers(self) -> list[tuple[str, str]]: ...

    @property
    def api_key(self) -> str | None: ...

    @property
    def tls(self) -> Any: ...

    def flush(self) -> None: ...


@dataclass
class ChaosPlan:
    """A validated experiment ready to run beside Locust's load."""

    experiment: Experiment
    run_dir: Path
    url: str | None
    admin_token: str | None
    horizon: float
    audit_log: Path | None = None
    session: ChaosSession | None = None

    @property
    def seed(self) -> int:
        assert self.experiment.seed is not None  # load_plan resolves it
        return self.experiment.seed


def add_options(group: Any) -> None:
    """Add `--chaos-plan` and `--chaos-set` to the harness's Locust option group."""
    group.add_argument("--chaos-plan", default=None, metavar="EXP.yaml",
                       help="run this experiment's faults, probes, observer and checks beside "
                       "the load against --host; the exit code becomes the verdict's (0 valid, "
                       "1 invalid, 3 unknown, 2 bad plan)")
    group.add_argument("--chaos-set", action="append", default=None, metavar="PATH=VALUE",
                       help="override a field of the --chaos-plan experiment, like llm-chaos "
                       "run --set (repeatable)")
    group.add_argument("--chaos-audit-log", default=None, metavar="PATH",
                       help="the target's audit log (with its rotated PATH.N files), copied "
                       "into the run directory at the end for the audit check")


# the plugin's options that are fields of the experiment's `load` under the same name
_LOAD_OPTIONS = ("arrival", "rate", "ramp_time", "step_users", "step_time", "spike_users",
                 "spike_at", "spike_duration", "max_tokens", "prompt_tokens", "request_timeout")


def _locustfiles(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return tuple(str(value or "").split(","))


def load_plan(opts: Any, environ: Mapping[str, str]) -> ChaosPlan:
    """Validate `--chaos-plan` against Locust's options; UsageError (exit 2) names the field."""
    experiment = load_experiment(Path(opts.chaos_plan), opts.chaos_set or (),
                                 draw_seed=lambda: int(opts.seed or 0))
    cfg = experiment.target
    token = cfg.admin_token or environ.get(ADMIN_TOKEN_ENV) or None
    for i, fault in enumerate(experiment.faults):
        if isinstance(fault, ProcessFaultSpec | AdminFaultSpec) and token is None:
            raise UsageError(f"faults[{i}].kind: {fault.kind} needs the target's admin token; "
                             f"set {ADMIN_TOKEN_ENV} or target.admin_token")
    horizon = float(opts.run_time) if opts.run_time else experiment.load.duration
    for i, fault in enumerate(experiment.faults):
        if opts.run_time and fault.at >= horizon:
            raise UsageError(f"faults[{i}].at: {fault.at:g} s is not before the end of the "
                             f"load (-t {horizon:g}s); make it earlier or -t longer")
    url = (opts.host or cfg.url or "").rstrip("/") or None
    if url is None and getattr(opts, "headless", False):
        raise UsageError("target.url: no target to test; give --host URL (or target.url in "
                         "the plan)")
    run_dir = Path(opts.run_dir) if opts.run_dir else new_run_dir(experiment, None)
    if run_dir.exists() and any(run_dir.iterdir()) and not _prepared(run_dir, opts.chaos_plan):
        raise UsageError(f"--run-dir: {run_dir} exists and is not empty; choose another "
                         "directory or remove it")
    # the load Locust runs is what its own options say: record that, not the plan's load
    load = experiment.load.model_copy(update={
        "locustfile": _locustfiles(opts.locustfile), "duration": horizon,
        "users": int(opts.num_users or experiment.load.users),
        "spawn_rate": float(opts.spawn_rate or experiment.load.spawn_rate),
        "shape": opts.load_shape, **{name: getattr(opts, name) for name in _LOAD_OPTIONS}})
    experiment = experiment.model_copy(update={"load": load})
    audit_log = Path(opts.chaos_audit_log) if opts.chaos_audit_log else None
    if audit_log is not None and not audit_log.parent.is_dir():
        raise UsageError(f"--chaos-audit-log: {audit_log.parent} is not a directory; give "
                         "the path of the target's audit log (its --audit-log)")
    return ChaosPlan(experiment, run_dir, url, token, horizon, audit_log)


def _prepared(run_dir: Path, plan_path: str) -> bool:
    """Whether `run_dir` is one `llm-chaos run --ui` prepared for this plan: the plan is its
    own experiment.yaml, and no load has run into it yet."""
    plan = Path(plan_path).resolve()
    return plan == (run_dir / "experiment.yaml").resolve() and not (
        run_dir / "history.jsonl").exists()


def copy_audit_log(source: Path, run_dir: Path) -> int:
    """Copy the audit log at `source` and its rotated `source.N` files into `run_dir` as
    `audit.jsonl[.N]` (whole files: the hash chain runs through them); how many were copied."""
    copied = 0
    for path in sorted(source.parent.glob(source.name + "*")):
        suffix = path.name[len(source.name):]
        if suffix and not (suffix.startswith(".") and suffix[1:].isdigit()):
            continue
        shutil.copyfile(path, run_dir / ("audit.jsonl" + suffix))
        copied += 1
    return copied


def _recorded(plan: ChaosPlan, url: str | None) -> Experiment:
    """The experiment as run: its target is the URL the load went to."""
    cfg = plan.experiment.target
    if url is None or cfg.url == url:
        return plan.experiment
    adapter = cfg.adapter if cfg.url is not None else "reference"
    target = TargetConfig(url=url, adapter=adapter, model=cfg.model,
                          request_timeout=cfg.request_timeout, admin_token=cfg.admin_token,
                          headers=cfg.headers, api_key_env=cfg.api_key_env,
                          ca_bundle=cfg.ca_bundle, insecure=cfg.insecure)
    return plan.experiment.model_copy(update={"target": target})


@dataclass
class ChaosSession:
    """One run of a plan inside Locust: started at test start, finished once at test stop (or
    quitting), with every fault reverted before the checks run."""

    plan: ChaosPlan
    environment: Any
    loadgen: LoadState
    out: TextIO = sys.stdout
    url: str = ""
    target: Target | None = None
    injector: FaultInjector | None = None
    observer: Observer | None = None
    schedule: Any = None
    schedule_started: float | None = None
    problems: list[str] = field(default_factory=list)
    outcome: RunOutcome | None = None
    # how the probes reach the target's API: the load's headers, API key and TLS settings
    _access: dict[str, Any] = field(default_factory=dict, repr=False)

    def start(self) -> None:
        """Check the faults against the live target, probe, then start observer and schedule.
        Raises UsageError / TargetError when the target cannot take this plan."""
        plan, experiment = self.plan, self.plan.experiment
        self.url = (self.environment.host or plan.url or "").rstrip("/")
        if not self.url:
            raise UsageError("target.url: no target to test; set the host (--host URL)")
        write_plan(_recorded(plan, self.url), plan.run_dir)
        st = self.loadgen  # how the load reaches the target: the probes do the same
        self._access = {"headers": dict(auth_headers(st.headers, st.api_key, False)),
                        "verify": st.tls}
        self.target = Target(self.url, plan.admin_token, verify=st.tls)
        recorder = JsonlRecorder(plan.run_dir / NEMESIS_FILE)
        steps = build_steps(experiment)
        self.injector = FaultInjector(self.target, steps, seed=plan.seed, recorder=recorder,
                                      blast_radius=experiment.nemesis.blast_radius,
                                      abort=abort_conditions(experiment))
        if steps:
            self.injector.validate()
        name = experiment.name or Path(self.environment.parsed_options.chaos_plan).name
        self._say(f"chaos plan {name} seed {plan.seed} against {self.url} -> {plan.run_dir}")
        for name, ok in run_probes(experiment.steady_state, "before", self.url, recorder,
                                   **self._access):
            self._say(f"  probe {name}: {'ok' if ok else 'FAILED'} (before)")
        if plan.admin_token is not None:
            self.observer = Observer(self.url, plan.admin_token,
                                     plan.run_dir / "telemetry.jsonl",
                                     interval=experiment.report.telemetry_interval,
                                     verify=st.tls)
            self.observer.start()
        # with the game-day console, the schedule runs even when empty: faults injected by
        # hand join it, under its guard, and are reverted with it
        if steps or getattr(self.environment, "web_ui", None) is not None:
            import gevent

            self.schedule_started = time.monotonic()
            self.schedule = gevent.spawn(self._run_schedule)

    def _run_schedule(self) -> None:
        assert self.injector is not None
        try:
            if self.plan.experiment.nemesis.dry_run:
                self.injector.dry_run(self.plan.horizon)
                return
            result = self.injector.run(self.plan.horizon)  # reverts all, however it ends
        except HarnessError as exc:
            self.problems.append(f"fault schedule: {exc}")
            return
        except Exception as exc:  # judged inconclusive, never a pass
            log.exception("llm-chaos: the fault schedule failed")
            self.problems.append(f"fault schedule: {type(exc).__name__}: {exc}")
            return
        for line in result.failed:
            self._say(f"  fault: {line}")
        if result.aborted:
            self._say(f"  fault schedule aborted: {result.aborted}")

    def finish(self) -> RunOutcome:
        """Revert every fault, probe, fetch events, judge and report; sets the exit code.
        Idempotent: the second call returns the first outcome."""
        if self.outcome is not None:
            return self.outcome
        plan, experiment = self.plan, self.plan.experiment
        try:
            if self.injector is not None:
                self._skipped()
                self.injector.stop()
                if self.schedule is not None:
                    self.schedule.join(timeout=SCHEDULE_GRACE)
                    # still running: GreenletExit inside run() reverts in its `finally`
                    self.schedule.kill(block=True, timeout=SCHEDULE_GRACE)
                self.injector.revert_all()
            if self.observer is not None:
                self.observer.stop()
            for name, ok in run_probes(experiment.steady_state, "after", self.url,
                                       JsonlRecorder(plan.run_dir / NEMESIS_FILE),
                                       **self._access):
                self._say(f"  probe {name}: {'ok' if ok else 'FAILED'} (after)")
            cfg = _recorded(plan, self.url).target
            if plan.admin_token is not None and cfg.adapter == "reference":
                try:
                    count = fetch_events(self.url, plan.admin_token,
                                         plan.run_dir / "events.jsonl")
                    self._say(f"  {count} target event(s) -> events.jsonl")
                except (TargetError, httpx.HTTPError) as exc:
                    self._say(f"  target events not fetched: {exc}")
            if plan.audit_log is not None:
                count = copy_audit_log(plan.audit_log, plan.run_dir)
                self._say(f"  {count} audit log file(s) from {plan.audit_log}"
                          if count else f"  no audit log at {plan.audit_log}")
        finally:
            if self.target is not None:
                self.target.close()
            self.loadgen.flush()  # every request record is in history.jsonl before the checks
            merge_history(plan.run_dir)
        inconclusive = "; ".join(self.problems) or None
        if inconclusive:
            self._say(f"the run could not complete: {inconclusive}")
        self.outcome = judge_run(experiment, plan.run_dir, self.out, inconclusive)
        self.environment.process_exit_code = self.outcome.exit_code
        return self.outcome

    def interrupted(self) -> None:
        """The test is being cut short (Ctrl-C, SIGTERM): the run is at best inconclusive."""
        self.problems.append("interrupted before the load ended")

    def _skipped(self) -> None:
        assert self.injector is not None
        if self.schedule_started is None or self.plan.experiment.nemesis.dry_run:
            return
        elapsed = time.monotonic() - self.schedule_started
        skipped = [t for t, _ in self.injector.plan(self.plan.horizon) if t > elapsed]
        if skipped:
            self.problems.append(f"the test stopped {elapsed:.1f} s after its start, before "
                                 f"{len(skipped)} scheduled injection(s) (the first at "
                                 f"{skipped[0]:g} s)")

    def _say(self, line: str) -> None:
        print(f"llm-chaos: {line}" if not line.startswith(" ") else line, file=self.out,
              flush=True)


# -- Locust's events -----------------------------------------------------------------------


def _role(environment: Any) -> str:
    from locust.runners import MasterRunner, WorkerRunner

    runner = environment.runner
    return ("master" if isinstance(runner, MasterRunner)
            else "worker" if isinstance(runner, WorkerRunner) else "local")


def on_init(environment: Any, **_: Any) -> None:
    """Validate the plan and choose the run directory (before the loadgen plugin opens it)."""
    opts = environment.parsed_options
    if opts is None or not getattr(opts, "chaos_plan", None) or _role(environment) == "worker":
        return
    try:
        plan = load_plan(opts, os.environ)
        write_plan(_recorded(plan, plan.url), plan.run_dir)
        _endpoint_options(plan.experiment.target, opts)
    except UsageError as exc:
        log.error("llm-chaos: --chaos-plan: %s", exc)
        raise SystemExit(2) from exc
    environment.llm_chaos_plan = plan
    # the loadgen plugin keeps the experiment.yaml found here and seeds its users the same
    opts.run_dir = str(plan.run_dir)
    opts.seed = plan.seed


def _endpoint_options(cfg: TargetConfig, opts: Any) -> None:
    """The plan's headers, API key and TLS settings as Locust options, where the command line
    did not give them (its `--header`s come after the plan's)."""
    opts.header = [f"{name}: {value}" for name, value in cfg.headers.items()] + list(
        getattr(opts, "header", None) or [])
    if cfg.api_key_env is not None and not getattr(opts, "api_key", None):
        opts.api_key = cfg.api_key(os.environ)
    if cfg.ca_bundle is not None and not getattr(opts, "ca_bundle", None):
        opts.ca_bundle = cfg.ca_bundle
    if cfg.insecure and not getattr(opts, "ca_bundle", None):
        opts.insecure = True


def _plan(environment: Any) -> ChaosPlan | None:
    plan = getattr(environment, "llm_chaos_plan", None)
    return plan if isinstance(plan, ChaosPlan) else None


def _on_test_start(environment: Any, loadgen: Callable[[Any], LoadState], **_: Any) -> None:
    plan = _plan(environment)
    if plan is None:
        return
    if plan.session is not None:
        log.warning("llm-chaos: the chaos plan ran in this Locust process already; this test "
                    "runs without it")
        return
    session = ChaosSession(plan, environment, loadgen(environment))
    try:
        session.start()
    except (UsageError, TargetError) as exc:
        hint = (f" (the admin token comes from target.admin_token or ${ADMIN_TOKEN_ENV})"
                if "token" in str(exc) else "")
        log.error("llm-chaos: --chaos-plan refused by the target: %s%s", exc, hint)
        if session.target is not None:
            session.target.close()
        environment.process_exit_code = 2
        runner = environment.runner
        stop = runner.quit if environment.parsed_options.headless else runner.stop
        import gevent

        gevent.spawn(stop)
        return
    plan.session = session


def _on_test_stop(environment: Any, **_: Any) -> None:
    plan = _plan(environment)
    if plan is not None and plan.session is not None:
        plan.session.finish()


def _on_quitting(environment: Any, **_: Any) -> None:
    # Ctrl-C and SIGTERM quit before the test stops: stop it, which finishes the session
    plan = _plan(environment)
    if plan is None or plan.session is None or plan.session.outcome is not None:
        return
    if environment.runner.state in ("spawning", "running"):
        plan.session.interrupted()
        environment.runner.stop()
    plan.session.finish()


def install(events: Any, loadgen: Callable[[Any], LoadState]) -> None:
    """Register the listeners that run after the loadgen plugin's (its records flushed);
    `loadgen` gives that plugin's state of a Locust environment."""
    events.test_start.add_listener(functools.partial(_on_test_start, loadgen=loadgen))
    events.test_stop.add_listener(_on_test_stop)
    events.quitting.add_listener(_on_quitting)

