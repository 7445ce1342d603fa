"""The worker's public HTTP API: completions, models, health, metrics and debug endpoints.

Each endpoint is a thin adapter: completions go to the `GenerationService`, the rest read the
engine or the metrics it holds.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .api import error_body
from .generation import GenerationService

__all__ = ["api_router"]


def api_router(service: GenerationService) -> APIRouter:
    """The /v1, /health, /metrics and /debug endpoints over one generation service."""
    engine = service.engine
    created = int(time.time())
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        ok, why = engine.healthy()
        return JSONResponse({"status": "ok" if ok else "unhealthy", "detail": why},
                            status_code=200 if ok else 503)

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": created, "owned_by": "llm-chaos",
             "max_model_len": engine.max_model_len} for n in service.names]}

    @router.get("/metrics")
    async def prometheus() -> Response:
        return Response(service.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/debug/engine")
    async def engine_stats() -> dict[str, Any]:
        return engine.stats()

    @router.get("/debug/sim/trace/{request_id}")
    async def sim_trace(request_id: str) -> JSONResponse:
        trace = getattr(engine, "trace", None)
        found = trace(request_id) if trace is not None else None
        if found is None:
            return JSONResponse(error_body(f"no trace for request {request_id!r}",
                                           "not_found_error"), status_code=404)
        return JSONResponse(found)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.generate(request, chat=True)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await service.generate(request, chat=False)

    return router
