"""A chaos plan from Locust's options: `--chaos-plan EXP.yaml` (and `--chaos-set`,
`--chaos-audit-log`) read into an experiment that says the load Locust itself runs, validated
before the test (UsageError, exit 2, names the field). `chaos_plan` runs it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from ..endpoint import ADMIN_TOKEN_ENV, API_KEY_ENV, REDACTED, auth_headers
from ..errors import TargetError, UsageError
from ..experiment import (
    AdminFaultSpec,
    Experiment,
    LoadConfig,
    ProcessFaultSpec,
    TargetConfig,
    load_experiment,
)
from ..runner.rundir import EXPERIMENT_FILE, HISTORY_FILE, new_run_dir
from ..runner.session import Session, write_plan

__all__ = ["ChaosPlan", "LoadState", "add_options", "endpoint_options", "load_plan",
           "locust_experiment"]


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
    """A validated experiment ready to run beside Locust's load; once the test started, its
    session, the greenlet running its faults and the load's state."""

    experiment: Experiment
    run_dir: Path
    url: str | None
    admin_token: str | None
    horizon: float
    audit_log: Path | None = None
    session: Session | None = None
    schedule: Any = None
    loadgen: LoadState | None = None

    @property
    def seed(self) -> int:
        assert self.experiment.seed is not None  # load_plan resolves it
        return self.experiment.seed

    def recorded(self, url: str | None) -> Experiment:
        """The experiment as run: its target is the URL the load went to."""
        cfg = self.experiment.target
        if url is None or cfg.url == url:
            return self.experiment
        adapter = cfg.adapter if cfg.url is not None else "reference"
        target = TargetConfig(url=url, adapter=adapter, model=cfg.model,
                              request_timeout=cfg.request_timeout, admin_token=cfg.admin_token,
                              headers=cfg.headers, api_key_env=cfg.api_key_env,
                              ca_bundle=cfg.ca_bundle, insecure=cfg.insecure)
        return self.experiment.model_copy(update={"target": target})

    def begin(self, host: str | None, load: LoadState, name: str, out: TextIO) -> Session:
        """The session against `host` (else target.url), prepared, with the steady state
        probed before the load; UsageError or TargetError (the session closed) when refused."""
        session = Session(self.experiment, self.run_dir, out=out, audit_log=self.audit_log)
        try:
            url = (host or self.url or "").rstrip("/")
            if not url:
                raise UsageError("target.url: no target to test; set the host (--host URL)")
            recorded = self.recorded(url)
            write_plan(recorded, self.run_dir)
            session.prepare(url, self.admin_token, verify=load.tls,
                            headers=dict(auth_headers(load.headers, load.api_key, False)),
                            reference=recorded.target.adapter == "reference")
            session.say(f"chaos plan {name} seed {self.seed} against {url} -> {self.run_dir}")
            session.steady_state("before")
        except (UsageError, TargetError):
            session.close()
            raise
        return session


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


def locust_experiment(opts: Any, *, host: str, model: str | None, seed: int,
                      header_names: Sequence[str], api_key_source: str | None,
                      duration: float) -> Experiment:
    """A plain Locust run (no --chaos-plan) as the experiment it was: its target (the host,
    spoken to as an OpenAI-compatible endpoint), the load Locust's options ran for `duration`
    seconds, no faults. Written as its run directory's experiment.yaml, so every run directory
    has the one shape. Header values and the API key stay out: a value may be a credential."""
    target = TargetConfig(
        url=host, adapter="openai", model=model or "",
        api_key_env=API_KEY_ENV if api_key_source == f"${API_KEY_ENV}" else None,
        headers={name: REDACTED for name in header_names},
        ca_bundle=getattr(opts, "ca_bundle", None), insecure=bool(getattr(opts, "insecure", False)))
    load = LoadConfig(
        locustfile=_locustfiles(opts.locustfile), users=int(opts.num_users or 1),
        spawn_rate=float(opts.spawn_rate or 1.0), duration=max(duration, 0.001),
        shape=opts.load_shape or "steady", dataset=getattr(opts, "dataset", None),
        **{name: getattr(opts, name) for name in _LOAD_OPTIONS})
    return Experiment(name="locust", seed=seed, target=target, load=load)


def _prepared(run_dir: Path, plan_path: str) -> bool:
    """Whether `run_dir` is one `llm-chaos run --ui` prepared for this plan: the plan is its
    own experiment.yaml, and no load has run into it yet."""
    plan = Path(plan_path).resolve()
    return plan == (run_dir / EXPERIMENT_FILE).resolve() and not (
        run_dir / HISTORY_FILE).exists()


def endpoint_options(cfg: TargetConfig, opts: Any) -> None:
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
