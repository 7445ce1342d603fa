"""`serve`: a router and its workers, started, watched and stopped together.

SIGTERM or Ctrl-C drains: new requests get 503, in-flight ones finish (up to
`--drain-timeout`), workers are stopped, and the process exits 0 with no child left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge, generate_latest

from .admin_api import read_fault_spec
from .api import KEEP_ALIVE_S, error_body
from .audit import AuditLog, AuditSettings, register_metrics
from .auth import require_api_key
from .http_limits import guarded_protocol
from .liveness import threads_per_worker, usable_cores
from .registry import EventBus, Registry, WorkerState
from .router import Router, RouterSettings
from .supervisor import FleetSettings, Supervisor

__all__ = ["Fleet", "create_fleet_app", "serve"]


class Fleet:
    """Everything of one `serve` process: registry, supervisor, router, admin token."""

    def __init__(self, fleet: FleetSettings, router: RouterSettings, admin_token: str,
                 drain_timeout: float = 30.0) -> None:
        self.events = EventBus()
        self.registry = Registry(self.events)
        self.router = Router(self.registry, router)
        self.supervisor = Supervisor(fleet, self.registry, self.events,
                                     queued=lambda m: self.router.queued.get(m, 0))
        self.supervisor.on_lost = self.router.worker_lost
        self.admin_token = admin_token
        # workers serve their own /admin/faults to the router only, with the same token
        fleet.worker_env["LLM_CHAOS_ADMIN_TOKEN"] = admin_token
        # and take the router's internal fields (a stream's continuation) from the router only
        self.router.internal_token = secrets.token_urlsafe(24)
        fleet.worker_env["LLM_CHAOS_INTERNAL_TOKEN"] = self.router.internal_token
        self.worker_auth = {"Authorization": f"Bearer {admin_token}"}
        self.admin_client = httpx.AsyncClient(timeout=5.0)
        self.drain_timeout = drain_timeout
        self.server: uvicorn.Server | None = None
        r = self.router.metrics_registry
        states = Gauge("llm_chaos_workers", "Workers by state", ["state"], registry=r)
        for state in (WorkerState.STARTING, WorkerState.LIVE, WorkerState.UNLIVE,
                      WorkerState.DRAINING, WorkerState.DEAD):
            states.labels(state).set_function(functools.partial(self._count_state, state))
        restarts = Gauge("llm_chaos_worker_restarts", "Worker restarts so far", registry=r)
        restarts.set_function(lambda: sum(w.restarts for w in self.registry.workers.values()))
        # token counts come from the workers' engines, summed over restarts (probed)
        prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed", ["model_name"],
                         registry=r)
        generated = Counter("vllm:generation_tokens", "Generation tokens", ["model_name"],
                            registry=r)

        def count_tokens(model: str, p: int, g: int) -> None:
            prompt.labels(model).inc(p)
            generated.labels(model).inc(g)

        self.supervisor.on_tokens = count_tokens
        scale = Counter("llm_chaos_fleet_events", "Fleet events (scale, restart, recycle...)",
                        ["type"], registry=r)
        self.events.on_emit = lambda event: scale.labels(event["type"]).inc()

    def _count_state(self, state: str) -> int:
        return sum(w.state == state for w in self.registry.workers.values())

    async def drain_and_exit(self) -> None:
        """Stop accepting, let in-flight requests finish, then let the server exit."""
        if self.router.draining:
            return
        self.router.draining = True
        self.events.emit("draining", in_flight=self.router.in_flight)
        deadline = time.monotonic() + self.drain_timeout
        while self.router.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.events.emit("drained", in_flight=self.router.in_flight)
        if self.server is not None:
            self.server.should_exit = True


class _Denied(Exception):
    def __init__(self, response: JSONResponse) -> None:
        super().__init__("admin access denied")
        self.response = response


def _check_token(fleet: Fleet, request: Request) -> JSONResponse | None:
    header = request.headers.get("authorization", "")
    if not header:
        return JSONResponse(error_body("admin API needs `Authorization: Bearer <token>`",
                                       "authentication_error", code=401), status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(),
                                                                fleet.admin_token):
        return JSONResponse(error_body("admin token is wrong", "permission_error", code=403),
                            status_code=403)
    return None


def create_fleet_app(fleet: Fleet) -> FastAPI:
    """The router's ASGI app: OpenAI API, /health, /metrics and the token-protected /admin."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await fleet.supervisor.start()
        except Exception:
            await fleet.supervisor.stop()
            raise
        try:
            yield
        finally:
            fleet.router.faults.clear()
            await fleet.supervisor.stop()
            await fleet.router.aclose()
            await fleet.admin_client.aclose()

    app = FastAPI(title="llm-chaos reference router", lifespan=lifespan, docs_url=None,
                  redoc_url=None)

    # A dependency, not an HTTP middleware: Starlette's BaseHTTPMiddleware would wrap every
    # streamed response of the OpenAI routes too, adding latency to each chunk.
    async def admin_only(request: Request) -> None:
        denied = _check_token(fleet, request)
        if denied is not None:
            raise _Denied(denied)

    @app.exception_handler(_Denied)
    async def denied(request: Request, exc: _Denied) -> Response:
        return exc.response

    admin = [Depends(admin_only)]

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await fleet.router.handle(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await fleet.router.handle(request, "/v1/completions")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "llm-chaos"}
            for m in fleet.registry.models()]}

    @app.get("/health")
    async def health() -> JSONResponse:
        live = {m: sum(w.state == WorkerState.LIVE for w in fleet.registry.of_model(m))
                for m in fleet.registry.models()}
        # not ready while it refuses work: a load balancer must stop sending it requests
        audit = fleet.router.audit
        refusing = (audit is not None and audit.failure is not None
                    and not audit.settings.fail_open)
        ok = bool(live) and all(live.values()) and not fleet.router.draining and not refusing
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "live_workers": live,
                                "draining": fleet.router.draining}
        if refusing:
            body["audit"] = f"failed closed: {audit.failure}"  # type: ignore[union-attr]
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(fleet.router.metrics_registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/admin/workers", dependencies=admin)
    async def workers() -> dict[str, Any]:
        return {"workers": [w.public() for w in fleet.registry.workers.values()]}

    @app.get("/admin/events", dependencies=admin)
    async def events(request: Request, since: int = 0, follow: bool = True) -> Response:
        backlog = [e for e in fleet.events.events if e["seq"] > since]

        async def stream() -> AsyncIterator[bytes]:
            queue = fleet.events.subscribe()
            try:
                for event in backlog:
                    yield f"data: {json.dumps(event)}\n\n".encode()
                last = backlog[-1]["seq"] if backlog else since
                while follow:
                    event = await queue.get()
                    if event["seq"] > last:
                        yield f"data: {json.dumps(event)}\n\n".encode()
            finally:
                fleet.events.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def ask_workers(method: str, path: str) -> list[tuple[str, httpx.Response]]:
        """The same admin call to every worker at once; a paused one just doesn't answer."""
        workers = list(fleet.registry.workers.values())

        async def one(worker: Any) -> httpx.Response | None:
            try:
                return await fleet.admin_client.request(method, worker.url + path,
                                                         headers=fleet.worker_auth,
                                                         timeout=1.0)
            except httpx.HTTPError:
                return None

        answers = await asyncio.gather(*(one(w) for w in workers))
        return [(w.id, r) for w, r in zip(workers, answers, strict=True) if r is not None]

    @app.get("/admin/faults", dependencies=admin)
    async def list_faults() -> dict[str, Any]:
        found = [{**f, "target": "router"} for f in fleet.router.faults.public()]
        for worker_id, resp in await ask_workers("GET", "/admin/faults"):
            with contextlib.suppress(ValueError):
                found += [{**f, "target": worker_id} for f in resp.json().get("faults", [])]
        return {"faults": found}

    @app.post("/admin/faults", dependencies=admin)
    async def add_fault(request: Request) -> JSONResponse:
        spec = await read_fault_spec(request)
        if isinstance(spec, JSONResponse):
            return spec
        if spec.target == "router":
            fault = fleet.router.faults.add(spec)
            fleet.events.emit("fault_added", fault=fault.id, fault_kind=spec.kind, target="router",
                              ttl=spec.ttl)
            return JSONResponse({**fault.public(), "target": "router"}, status_code=201)
        worker = fleet.registry.workers.get(spec.target)
        if worker is None:
            return JSONResponse(error_body(
                f"target: no worker {spec.target!r}; use `router` or one of "
                f"{', '.join(fleet.registry.workers)}", "invalid_request_error", "target"),
                status_code=400)
        try:
            resp = await fleet.admin_client.post(worker.url + "/admin/faults",
                                                 content=spec.model_dump_json(),
                                                 headers=fleet.worker_auth)
        except httpx.HTTPError as exc:
            return JSONResponse(error_body(f"worker {worker.id} did not answer: {exc}",
                                           "server_error"), status_code=502)
        if resp.status_code == 201:
            fleet.events.emit("fault_added", fault=resp.json()["id"], fault_kind=spec.kind,
                              target=worker.id, ttl=spec.ttl)
        return JSONResponse({**resp.json(), "target": worker.id}, status_code=resp.status_code)

    @app.delete("/admin/faults/{fault_id}", dependencies=admin)
    async def remove_fault(fault_id: str) -> JSONResponse:
        if fleet.router.faults.remove(fault_id) is not None:
            fleet.events.emit("fault_removed", fault=fault_id, target="router")
            return JSONResponse({"removed": fault_id, "target": "router"})
        for worker_id, resp in await ask_workers("DELETE", f"/admin/faults/{fault_id}"):
            if resp.status_code == 200:
                fleet.events.emit("fault_removed", fault=fault_id, target=worker_id)
                return JSONResponse({"removed": fault_id, "target": worker_id})
        return JSONResponse(error_body(f"no active fault {fault_id!r} (it may have expired)",
                                       "not_found_error"), status_code=404)

    @app.delete("/admin/faults", dependencies=admin)
    async def clear_faults() -> dict[str, Any]:
        removed = fleet.router.faults.clear()
        for _, resp in await ask_workers("DELETE", "/admin/faults"):
            with contextlib.suppress(ValueError):
                removed += int(resp.json().get("removed", 0))
        fleet.events.emit("faults_cleared", removed=removed)
        return {"removed": removed}

    return app


class _FastPath:
    """Pure ASGI front: the two OpenAI POST routes go straight to the router, skipping the
    FastAPI middleware stack (about a fifth of the router's CPU per request); everything else,
    lifespan included, goes to the FastAPI app."""

    _ROUTES = ("/v1/chat/completions", "/v1/completions")

    def __init__(self, app: FastAPI, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and scope["method"] == "POST" and path in self._ROUTES:
            request = Request(scope, receive)
            response = await self.router.handle(request, path)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT start a drain instead of an immediate stop, and the
    process then exits 0 (uvicorn would re-raise the signal)."""

    fleet: Fleet

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.fleet.router.draining:
            self.force_exit = sig == signal.SIGINT
            self.should_exit = True
            return
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.fleet.drain_and_exit()))


def _admin_token(given: str | None, token_file: Path | None, port: int) -> tuple[str, Path | None]:
    if given:
        return given, None
    token = secrets.token_urlsafe(24)
    path = token_file or Path(tempfile.gettempdir()) / f"llm-chaos-admin-{port}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path


def serve(args: Any) -> int:
    """Run a fleet until SIGTERM/SIGINT; exit 0 after a clean drain."""
    token, token_path = _admin_token(args.admin_token, args.admin_token_file, args.port)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="llm-chaos-fleet-"))
    worker_args = list(args.worker_arg or [])
    models = args.model or ["smollm2"]
    threads: int | str = "as --worker-arg sets"
    if not any(a.split("=")[0] == "--threads" for a in worker_args):
        threads = args.worker_threads or threads_per_worker(args.workers * len(models))
        worker_args.append(f"--threads={threads}")
    fleet_settings = FleetSettings(
        models=models, workers=args.workers, min_workers=args.min_workers,
        max_workers=args.max_workers, worker_args=worker_args, log_dir=log_dir,
        memory_limit_bytes=int(args.worker_memory_limit * 2**20)
        if args.worker_memory_limit else None,
        stall_timeout=args.stall_timeout, target_ongoing=args.target_ongoing,
        upscale_delay=args.upscale_delay, downscale_delay=args.downscale_delay,
        autoscale=args.max_workers is not None or args.min_workers is not None,
        router_port=args.port)
    router_settings = RouterSettings(request_timeout=args.request_timeout,
                                     max_attempts=args.max_attempts,
                                     worker_capacity=args.worker_capacity,
                                     max_queue=args.max_queue,
                                     resume_streams=args.resume_streams)
    fleet = Fleet(fleet_settings, router_settings, token, drain_timeout=args.drain_timeout)
    audit = _open_audit(args, fleet)
    if getattr(args, "planted_bug", None):
        from .planted import plant

        plant(args.planted_bug, fleet.registry, audit)
    app = _FastPath(create_fleet_app(fleet), fleet.router)
    # outermost: the fast path answers the OpenAI POST routes before the FastAPI app would
    config = uvicorn.Config(require_api_key(app, args.api_key), host=args.host, port=args.port,
                            log_level=args.log_level, timeout_graceful_shutdown=5,
                            timeout_keep_alive=KEEP_ALIVE_S,
                            http=guarded_protocol(args.request_read_timeout))
    server = _DrainingServer(config)
    server.fleet = fleet
    fleet.server = server
    print(f"llm-chaos serve: router pid={os.getpid()} on http://{args.host}:{args.port}, "
          f"models={','.join(fleet_settings.models)}, torch threads per worker: {threads} "
          f"({usable_cores()} cores), admin token "
          f"{'in ' + str(token_path) if token_path else 'given'}, worker logs in {log_dir}",
          file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        fleet.supervisor.kill_all_now()
        if audit is not None:
            audit.close()
        if token_path is not None:  # generated for this run: useless once it stops
            token_path.unlink(missing_ok=True)
    return 0 if server.started else 1


def _open_audit(args: Any, fleet: Fleet) -> AuditLog | None:
    """Open `--audit-log` (recovering it after a crash) and hand it to the router."""
    if getattr(args, "audit_log", None) is None:
        return None
    audit = AuditLog(AuditSettings(path=args.audit_log, content=args.audit_content,
                                   fsync=args.audit_fsync, max_bytes=args.audit_max_bytes,
                                   fail_open=args.audit_fail_open,
                                   fault_after=args.audit_fault_after))
    try:
        first = audit.open()
    except OSError as exc:
        raise ValueError(f"--audit-log {args.audit_log}: {exc.strerror or exc}") from exc
    if first["type"] == "recovery":
        print(f"llm-chaos serve: audit log recovered after a crash: "
              f"{len(first['in_doubt'])} request(s) in doubt, torn line: "
              f"{'yes' if first['torn'] else 'no'}", file=sys.stderr, flush=True)
    fleet.router.audit = audit
    register_metrics(audit, fleet.router.metrics_registry)
    return audit
