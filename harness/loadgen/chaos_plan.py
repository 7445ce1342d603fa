"""`locust -f scenarios/ --chaos-plan EXP.yaml --host URL`: Locust's events drive the run's
session (`runner.session`, as `llm-chaos run` does) against the target at `--host`. Init: the
plan read (`loadgen.plan`; bad: exit 2). Test start: prepare (refused: exit 2), steady state,
observer, the faults in a greenlet for `-t`. Test stop or quitting (Ctrl-C, SIGTERM): wind
down and judge, once per process; Locust's exit code is the verdict's (0, 1, 3)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from ..endpoint import ADMIN_TOKEN_ENV
from ..errors import TargetError, UsageError
from ..runner.session import write_plan
from .plan import ChaosPlan, LoadState, endpoint_options, load_plan

__all__ = ["install", "on_init"]

log = logging.getLogger("llm_chaos.chaos_plan")

SCHEDULE_GRACE = 60.0  # seconds a stopped schedule gets to revert its faults


def on_init(environment: Any, **_: Any) -> None:
    """Validate the plan and choose the run directory (before the loadgen plugin opens it)."""
    from locust.runners import WorkerRunner

    opts = environment.parsed_options
    if opts is None or not getattr(opts, "chaos_plan", None) \
            or isinstance(environment.runner, WorkerRunner):
        return
    try:
        plan = load_plan(opts, os.environ)
        write_plan(plan.recorded(plan.url), plan.run_dir)
        endpoint_options(plan.experiment.target, opts)
    except UsageError as exc:
        log.error("llm-chaos: --chaos-plan: %s", exc)
        raise SystemExit(2) from exc
    environment.llm_chaos_plan = plan
    # the loadgen plugin keeps the experiment.yaml found here and seeds its users the same
    opts.run_dir, opts.seed = str(plan.run_dir), plan.seed


def _plan(environment: Any) -> ChaosPlan | None:
    plan = getattr(environment, "llm_chaos_plan", None)
    return plan if isinstance(plan, ChaosPlan) else None


def _on_test_start(environment: Any, loadgen: Callable[[Any], LoadState], **_: Any) -> None:
    plan = _plan(environment)
    if plan is None or plan.session is not None:
        if plan is not None:
            log.warning("llm-chaos: the chaos plan ran in this Locust process already; this "
                        "test runs without it")
        return
    load = loadgen(environment)  # how the load reaches the target: the probes go the same way
    name = plan.experiment.name or Path(environment.parsed_options.chaos_plan).name
    try:
        session = plan.begin(environment.host, load, name, sys.stdout)
    except (UsageError, TargetError) as exc:
        hint = (f" (the admin token comes from target.admin_token or ${ADMIN_TOKEN_ENV})"
                if "token" in str(exc) else "")
        log.error("llm-chaos: --chaos-plan refused by the target: %s%s", exc, hint)
        environment.process_exit_code = 2
        runner = environment.runner
        gevent.spawn(runner.quit if environment.parsed_options.headless else runner.stop)
        return
    session.observe()
    # with the game-day console, the schedule runs even when empty: faults injected by hand
    # join it, under its guard, and are reverted with it
    if session.steps or getattr(environment, "web_ui", None) is not None:
        plan.schedule = gevent.spawn(session.run_faults, plan.horizon)
    plan.session, plan.loadgen = session, load


def _finish(environment: Any) -> None:
    plan = _plan(environment)
    if plan is None or plan.session is None or plan.session.outcome is not None:
        return
    # the load's records flushed into history.jsonl before the checks
    plan.session.wind_down(plan.horizon, functools.partial(_join, plan.schedule),
                           plan.loadgen.flush if plan.loadgen is not None else None)
    environment.process_exit_code = plan.session.judge().exit_code


def _join(schedule: Any) -> None:
    if schedule is not None:
        schedule.join(timeout=SCHEDULE_GRACE)
        # still running: GreenletExit inside run() reverts in its `finally`
        schedule.kill(block=True, timeout=SCHEDULE_GRACE)


def _on_quitting(environment: Any, **_: Any) -> None:
    # Ctrl-C and SIGTERM quit before the test stops: stop it, which finishes the session
    plan = _plan(environment)
    if plan is None or plan.session is None or plan.session.outcome is not None:
        return
    if environment.runner.state in ("spawning", "running"):
        plan.session.problems.append("interrupted before the load ended")
        environment.runner.stop()
    _finish(environment)


def install(events: Any, loadgen: Callable[[Any], LoadState]) -> None:
    """Register the listeners that run after the loadgen plugin's (its records flushed);
    `loadgen` gives that plugin's state of a Locust environment."""
    events.test_start.add_listener(functools.partial(_on_test_start, loadgen=loadgen))
    events.test_stop.add_listener(lambda environment, **_: _finish(environment))
    events.quitting.add_listener(_on_quitting)
