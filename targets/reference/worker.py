"""The worker server: one engine behind an OpenAI-compatible HTTP API.

Endpoints: POST /v1/chat/completions, POST /v1/completions (streaming as SSE or not),
GET /v1/models, GET /health (fails when the engine has work but makes no progress),
GET /metrics (Prometheus), GET /debug/engine (steps and batch composition), and the fault
admin API under /admin/faults. A bad request gets an OpenAI-style error JSON with a 4xx naming
the field, never a 5xx.

The endpoints live in `worker_api` and `admin_api`; a request's way to the engine and back is
`generation.GenerationService`. This module only assembles the app.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admin_api import admin_router
from .api import error_body, validation_message
from .faults import FaultSet
from .generation import GenerationService
from .metrics import WorkerMetrics
from .protocol import Engine
from .worker_api import api_router

__all__ = ["create_app"]


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Starlette's own errors (unknown path, wrong method) in OpenAI's error shape.
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind, code=exc.status_code),
                        status_code=exc.status_code)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = validation_message(exc)
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


def create_app(engine: Engine, served_names: list[str] | None = None) -> FastAPI:
    """Build the worker's ASGI app around a (not yet started) engine."""
    names = served_names or [engine.model_name]
    metrics = WorkerMetrics(names[0], engine.stats)
    faults = FaultSet()
    service = GenerationService(engine, names, metrics, faults,
                                internal_token=os.environ.get("LLM_CHAOS_INTERNAL_TOKEN", ""))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="llm-chaos reference worker", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.faults = faults
    app.state.generation = service
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_invalid)
    app.include_router(admin_router(faults, os.environ.get("LLM_CHAOS_ADMIN_TOKEN", "")))
    app.include_router(api_router(service))
    return app
