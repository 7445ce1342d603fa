"""The game-day console: a `Chaos` tab in Locust's web UI, live while a test runs.

It shows the timeline of the requests so far (TTFT p50/p95, ITL p95, error rate, output
tokens/s) with the fault windows (past, active, and the plan's ahead of now), the active
faults with a Revert button each and a form to inject the fault kinds the plan allows, the
fleet as the observer sees it with the target's events, and the verdicts so far (the checks
run over the run directory as it stands; at the end the final ones and report.html).

Locust's extension points: the tab is one of `template_args["extended_tabs"]`; its routes
are a Flask blueprint on `web_ui.app` (under `--web-base-path`, behind `--web-login` with
`auth_required_if_enabled`), so it listens where Locust's web UI listens. Locust's React UI
renders only tables in an extra tab, so a small script added to its page shows the console
(plain HTML, JS and SVG from `console_assets/`, no build step) in the tab as a frame.

Faults injected here go through the session's own FaultInjector: recorded in history.jsonl
like scheduled ones (with `"by": "console"`), under the same guard, reverted when the test
stops, on Ctrl-C and on SIGTERM. Injecting and reverting need the target's admin token,
entered once: it is compared with the plan's and never kept in the browser, a URL or a log;
the browser gets an HttpOnly, SameSite=Strict session cookie, and every POST must carry the
session's CSRF token in a header and come from the console's own origin.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import httpx
from flask import Blueprint, Response, jsonify, request, send_from_directory

from ..checks import load_run, run_checks
from ..errors import HarnessError, UsageError
from ..faults import Step
from ..runner.faults import build_fault
from ..runner.rundir import HISTORY_FILE, NEMESIS_FILE, TELEMETRY_FILE
from .console_model import (
    JsonlTail,
    LiveTimeline,
    allowed_kinds,
    fault_spec,
    fleet_view,
    form_fields,
    planned_faults,
    snapshot_run_dir,
    windows_view,
)
from .plan import ChaosPlan
from .sse import json_objects

__all__ = ["ASSETS", "Console", "install_console"]

log = logging.getLogger("llm_chaos.console")

ASSETS = Path(__file__).with_name("console_assets")
PREFIX = "/llm-chaos/console"
COOKIE = "llm_chaos_console"
CSRF_HEADER = "X-LLM-Chaos-CSRF"
REFRESH_S = 1.0
VERDICTS_EVERY_S = 4.0  # the checks over the run so far, at most this often (off the loop)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class Console:
    """The console of one Locust process: what it has read of the run, and its sessions."""

    environment: Any
    plan: ChaosPlan | None
    run_dir: Path | None
    t0: float | None = None
    ended: float | None = None  # when the session was judged: the timeline stops there
    timeline: LiveTimeline | None = None
    nemesis: list[dict[str, Any]] = field(default_factory=list)
    sample: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    event_seq: int = 0
    sessions: dict[str, str] = field(default_factory=dict, repr=False)
    verdicts: dict[str, Any] | None = None
    verdicts_at: float = 0.0
    _tails: dict[str, JsonlTail] = field(default_factory=dict, repr=False)
    _pending: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _poller: Any = None
    _judging: bool = False

    # -- what the run has written so far ------------------------------------------------------

    @property
    def session(self) -> Any:
        return None if self.plan is None else self.plan.session

    def _tail(self, name: str) -> list[dict[str, Any]]:
        if self.run_dir is None:
            return []
        tail = self._tails.setdefault(name, JsonlTail(self.run_dir / name))
        return tail.read()

    def start(self) -> None:
        """The test started: the timeline's zero is now (the fault schedule's start)."""
        if self.t0 is None:
            self.t0 = time.time()
            self.timeline = LiveTimeline(self.t0)
            self.timeline.add(self._pending)
            self._pending.clear()
        if self._poller is None:
            self._poller = gevent.spawn(self._poll_loop)

    def refresh(self) -> None:
        """Read what was appended to the run directory, and the target's new events."""
        chat = self._tail(HISTORY_FILE)
        if self.timeline is None:
            self._pending.extend(chat)
        else:
            self.timeline.add(chat)
        self.nemesis += [x for x in self._tail(NEMESIS_FILE) + chat
                         if x.get("f") in ("inject", "revert")]
        samples = self._tail(TELEMETRY_FILE)
        if samples:
            self.sample = samples[-1]
        self._poll_events()

    def _poll_events(self) -> None:
        plan = self.plan
        session = self.session
        if plan is None or plan.admin_token is None or session is None or not session.url:
            return
        try:
            resp = httpx.get(session.url + "/admin/events",
                             params={"follow": "false", "since": self.event_seq},
                             headers={"Authorization": f"Bearer {plan.admin_token}"},
                             timeout=2.0, verify=session.verify or True)
        except httpx.HTTPError:
            return  # the fleet may be down: that is what is being watched
        if resp.status_code != 200:
            return
        for event in json_objects(resp.content):
            self.events.append(event)
            self.event_seq = max(self.event_seq, int(event.get("seq") or 0))

    def _poll_loop(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # the console must never take the test down
                log.exception("llm-chaos console: refreshing failed")
            if self.session is not None and self.session.outcome is not None:
                self.refresh()  # the last lines, then stop reading
                return
            gevent.sleep(REFRESH_S)

    # -- views --------------------------------------------------------------------------------

    def status(self) -> str:
        """ready (no test yet), running, judging, ended."""
        session = self.session
        if session is not None and session.outcome is not None:
            return "ended"
        state = getattr(self.environment.runner, "state", "ready")
        if self.t0 is None:
            return "ready"
        if state in ("spawning", "running", "cleanup"):
            return "running"
        return "judging" if session is not None else "ended"

    def state(self) -> dict[str, Any]:
        """Everything the page redraws every second (no secrets)."""
        if self.ended is None and self.status() == "ended":
            self.ended = time.time()
        now = self.ended or time.time()
        t0 = self.t0 if self.t0 is not None else now
        out: dict[str, Any] = {
            "status": self.status(), "now": round(now - t0, 3) if self.t0 else 0.0,
            "bucket_s": self.timeline.width if self.timeline else None,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "plan": None, "series": None, "windows": [], "planned": [], "active": [],
            "kinds": [], "fleet": fleet_view(self.sample, self.events),
            "report": None, "schedule_running": False,
        }
        if self.timeline is not None:
            out["series"] = self.timeline.series(now)
            out["windows"] = windows_view(self.nemesis, t0, now)
        plan = self.plan
        if plan is None:
            return out
        experiment = plan.experiment
        out["plan"] = {"name": experiment.name, "seed": plan.seed, "horizon": plan.horizon,
                       "token_needed": plan.admin_token is not None}
        out["kinds"] = [{"kind": k, "fields": [f.to_json() for f in form_fields(k)]}
                        for k in allowed_kinds(experiment, plan.admin_token)]
        session = self.session
        injector = session.injector if session is not None else None
        offset = 0.0
        if session is not None and session.faults_started is not None and self.t0:
            offset = (now - (time.monotonic() - session.faults_started)) - t0
        if injector is not None:
            planned = len(experiment.faults)
            out["planned"] = planned_faults(
                [(at, i) for at, i in injector.plan(plan.horizon) if i < planned],
                [s.fault.name for s in injector.steps], [s.duration for s in injector.steps],
                offset)
            out["active"] = [{**a, "by": "console" if a["step"] >= planned else "schedule"}
                             for a in injector.active_faults()]
            out["schedule_running"] = injector.running
        else:
            out["planned"] = [{"fault": f.kind, "start": f.at, "end": f.at + f.duration}
                              for f in experiment.faults]
        if self.run_dir is not None and (self.run_dir / "report.html").is_file() \
                and self.status() == "ended":
            out["report"] = "report.html"
        return out

    def verdicts_now(self) -> dict[str, Any]:
        """The verdicts so far (every few seconds, computed in a thread), or the final ones."""
        session = self.session
        if session is not None and session.outcome is not None and self.run_dir is not None:
            return _final_verdicts(self.run_dir)
        if self.plan is None or self.run_dir is None:
            return {"final": False, "checks": [], "note": "no chaos plan: start Locust with "
                    "--chaos-plan EXP.yaml for faults, checks and verdicts"}
        if self.t0 is None:
            return {"final": False, "checks": [], "note": "the checks run once the test runs"}
        stale = time.monotonic() - self.verdicts_at > VERDICTS_EVERY_S
        if (self.verdicts is None or stale) and not self._judging:
            self._judging = True
            try:
                self.verdicts = gevent.get_hub().threadpool.apply(
                    _judge_so_far, (self.run_dir, self.plan, list(self.events)))
            finally:
                self._judging = False
                self.verdicts_at = time.monotonic()
        return self.verdicts or {"final": False, "checks": [], "note": "judging..."}

    # -- faults by hand -------------------------------------------------------------------

    def inject(self, form: dict[str, Any]) -> str:
        """Inject the fault the form describes now; its inject id. UsageError / HarnessError
        say why not."""
        plan, session = self.plan, self.session
        if plan is None or session is None or session.injector is None:
            raise HarnessError("no chaos session is running: start the test first")
        spec = fault_spec(plan.experiment, plan.admin_token, form)
        step = Step(build_fault(spec), duration=spec.duration)
        inject_id: str = session.injector.inject_now(step, "console")
        log.info("llm-chaos console: injected %s (%s) by hand", spec.kind, inject_id)
        return inject_id

    def revert(self, inject_id: str) -> bool:
        """Revert one active fault now; False when it is not active."""
        session = self.session
        if session is None or session.injector is None:
            return False
        done: bool = session.injector.revert_now(inject_id, "console")
        if done:
            log.info("llm-chaos console: reverted %s by hand", inject_id)
        return done


def _judge_so_far(run_dir: Path, plan: ChaosPlan, events: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """The plan's checks over a snapshot of the run so far (the audit log is judged only at
    the end: mid-run, its open requests would look lost)."""
    snap = snapshot_run_dir(run_dir, run_dir / NEMESIS_FILE, events)
    try:
        config = plan.experiment.checks
        live = config.model_copy(update={"checks": tuple(
            c for c in config.checks if c != "audit")})
        result = run_checks(load_run(snap), live)
        checks = [{"name": c.name, "verdict": c.verdict.value, "summary": c.summary}
                  for c in result.results]
        if "audit" in config.checks:
            checks.append({"name": "audit", "verdict": "pending",
                           "summary": "judged at the end, on the target's whole audit log"})
        return {"final": False, "checks": checks, "verdict": result.verdict.value,
                "requests": len(result.run.requests), "at": time.time()}
    except UsageError as exc:
        return {"final": False, "checks": [], "note": str(exc)}
    finally:
        shutil.rmtree(snap, ignore_errors=True)


def _final_verdicts(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "checks.json"
    if not path.is_file():
        return {"final": True, "checks": [], "note": "no checks.json was written"}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"final": True, "verdict": data.get("verdict"), "exit_code": data.get("exit_code"),
            "checks": [{"name": c["name"], "verdict": c["verdict"], "summary": c["summary"]}
                       for c in data.get("checks", [])],
            "report": "report.html" if (run_dir / "report.html").is_file() else None}


# -- the web side ------------------------------------------------------------------------------


def _same_origin() -> bool:
    """A state-changing request comes from the console's own origin: the browser's Origin
    (or Referer) names this host, and the host is the one the UI was reached at."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}" == request.host_url.rstrip("/")


def _error(message: str, status: int) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    return resp


View = Callable[[], Response]


def _blueprint(console: Console, web_ui: Any, base: str) -> Blueprint:
    bp = Blueprint("llm_chaos_console", __name__, url_prefix=base + PREFIX)
    # Locust's `--web-login` check, on every route of the console
    guard: Callable[[Callable[..., Response]], Callable[..., Response]] = \
        web_ui.auth_required_if_enabled

    def session_csrf() -> str | None:
        sid = request.cookies.get(COOKIE)
        return console.sessions.get(sid) if sid else None

    def check_post(need_session: bool = True) -> Response | None:
        if not _same_origin():
            return _error("refused: not from the console's own page (Origin)", 403)
        if need_session:
            csrf = session_csrf()
            if csrf is None:
                return _error("enter the admin token first", 401)
            if not hmac.compare_digest(csrf, request.headers.get(CSRF_HEADER, "")):
                return _error("refused: missing or wrong CSRF token", 403)
        return None

    def post(path: str, *, need_session: bool = True) -> Callable[[View], View]:
        """Register a state-changing route: Locust's login guard, then `check_post`."""
        def register(view: View) -> View:
            @functools.wraps(view)
            def checked() -> Response:
                refused = check_post(need_session)
                return view() if refused is None else refused

            bp.route(path, methods=["POST"])(guard(checked))
            return view

        return register

    @bp.route("/")
    @guard
    def index() -> Response:
        resp = send_from_directory(ASSETS, "index.html")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.route("/assets/<path:name>")
    @guard
    def assets(name: str) -> Response:
        return send_from_directory(ASSETS, name)

    @bp.route("/api/state")
    @guard
    def state() -> Response:
        return jsonify({**console.state(), "authorized": session_csrf() is not None})

    @bp.route("/api/verdicts")
    @guard
    def verdicts() -> Response:
        return jsonify(console.verdicts_now())

    @bp.route("/api/session")
    @guard
    def session() -> Response:
        # the CSRF token only to the page holding the session cookie (SameSite=Strict)
        csrf = session_csrf()
        return jsonify({"authorized": csrf is not None, "csrf": csrf})

    @post("/api/login", need_session=False)
    def login() -> Response:
        plan = console.plan
        if plan is None or plan.admin_token is None:
            return _error("this run has no admin token: faults cannot be driven by hand "
                          "(set $LLM_CHAOS_ADMIN_TOKEN or target.admin_token)", 409)
        given = str((request.get_json(silent=True) or {}).get("token", ""))
        if not hmac.compare_digest(given.encode(), plan.admin_token.encode()):
            time.sleep(0.5)  # slows a guessing loop down
            return _error("wrong admin token", 403)
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        console.sessions[sid] = csrf
        resp = jsonify({"authorized": True, "csrf": csrf})
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict",
                        secure=request.scheme == "https", path=base + PREFIX)
        return resp

    @post("/api/logout")
    def logout() -> Response:
        console.sessions.pop(request.cookies.get(COOKIE, ""), None)
        resp = jsonify({"authorized": False})
        resp.delete_cookie(COOKIE, path=base + PREFIX)
        return resp

    @post("/api/inject")
    def inject() -> Response:
        form = request.get_json(silent=True)
        if not isinstance(form, dict):
            return _error("send the form as a JSON object", 400)
        try:
            inject_id = console.inject(form)
        except UsageError as exc:
            return _error(str(exc), 400)
        except HarnessError as exc:
            return _error(str(exc), 409)
        except Exception as exc:  # the target said no in a way of its own: tell the operator
            log.exception("llm-chaos console: inject failed")
            return _error(f"{type(exc).__name__}: {exc}", 502)
        return jsonify({"inject": inject_id})

    @post("/api/revert")
    def revert() -> Response:
        inject_id = str((request.get_json(silent=True) or {}).get("inject", ""))
        if not console.revert(inject_id):
            return _error(f"no active fault {inject_id!r} (reverted already?)", 404)
        return jsonify({"reverted": inject_id})

    @bp.route("/report.html")
    @guard
    def report() -> Response:
        if console.run_dir is None or not (console.run_dir / "report.html").is_file():
            return _error("no report yet: it is written when the test ends", 404)
        return send_from_directory(console.run_dir.resolve(), "report.html")

    @bp.after_request
    def no_store(resp: Response) -> Response:
        if request.path.startswith(base + PREFIX + "/api/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp


_TAB_SCRIPT = '<script src="./llm-chaos/console/assets/tab.js"></script>'


def install_console(environment: Any, run_dir: Path | None) -> Console | None:
    """Add the Chaos tab and the console's routes to this process's web UI (none on a
    worker or headless); the console, or None."""
    web_ui = getattr(environment, "web_ui", None)
    if web_ui is None:
        return None
    plan = getattr(environment, "llm_chaos_plan", None)
    console = Console(environment, plan if isinstance(plan, ChaosPlan) else None, run_dir)
    environment.llm_chaos_console = console
    opts = environment.parsed_options
    base = (getattr(opts, "web_base_path", None) or "").rstrip("/")
    tabs = web_ui.template_args.setdefault("extended_tabs", [])
    tabs.append({"title": "Chaos", "key": "chaos"})
    web_ui.app.register_blueprint(_blueprint(console, web_ui, base))

    def add_tab_script(resp: Response) -> Response:
        # Locust's React page gets the script that shows the console in the Chaos tab
        if request.path == base + "/" and resp.mimetype == "text/html" \
                and not resp.direct_passthrough:
            html = resp.get_data(as_text=True)
            resp.set_data(html.replace("</body>", _TAB_SCRIPT + "\n</body>", 1))
        return resp

    web_ui.app.after_request(add_tab_script)
    host = getattr(web_ui, "host", "")
    if host not in _LOOPBACK:
        log.warning("llm-chaos console: Locust's web UI listens on %s (all interfaces when "
                    "empty); the console's inject and revert need the admin token, but its "
                    "views are open to whoever reaches the port: --web-host 127.0.0.1 keeps "
                    "it on this machine", host or "*")
    return console
