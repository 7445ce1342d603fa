"""The worker's fault admin API: list, add, remove and clear in-process faults.

Every endpoint needs `Authorization: Bearer <LLM_CHAOS_ADMIN_TOKEN>`; without that token set
the whole API answers 403, so a worker started plainly cannot be made to misbehave.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from .api import error_body, validation_message
from .faults import FaultSet, FaultSpec

__all__ = ["admin_router", "read_fault_spec"]


async def read_fault_spec(request: Request) -> FaultSpec | JSONResponse:
    """The fault a POST /admin/faults body describes, or the 400 answer naming what is wrong
    (the worker's admin API and the router's share it)."""
    try:
        return FaultSpec.model_validate_json(await request.body())
    except ValidationError as exc:
        message, param = validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


def _denied(request: Request, admin_token: str) -> JSONResponse | None:
    """The 403 answer for a request without the admin token, or None when it may go on."""
    if not admin_token:
        return JSONResponse(error_body("this worker's admin API is off: start it with "
                                       "LLM_CHAOS_ADMIN_TOKEN set", "permission_error",
                                       code=403), status_code=403)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), admin_token):
        return JSONResponse(error_body("admin token missing or wrong", "permission_error",
                                       code=403), status_code=403)
    return None


def admin_router(faults: FaultSet, admin_token: str) -> APIRouter:
    """The /admin/faults endpoints over one process's fault set, guarded by `admin_token`."""
    router = APIRouter()

    @router.get("/admin/faults")
    async def list_faults(request: Request) -> JSONResponse:
        return _denied(request, admin_token) or JSONResponse({"faults": faults.public()})

    @router.post("/admin/faults")
    async def add_fault(request: Request) -> JSONResponse:
        denied = _denied(request, admin_token)
        if denied is not None:
            return denied
        spec = await read_fault_spec(request)
        if isinstance(spec, JSONResponse):
            return spec
        return JSONResponse(faults.add(spec).public(), status_code=201)

    @router.delete("/admin/faults/{fault_id}")
    async def remove_fault(request: Request, fault_id: str) -> JSONResponse:
        denied = _denied(request, admin_token)
        if denied is not None:
            return denied
        if faults.remove(fault_id) is None:
            return JSONResponse(error_body(f"no active fault {fault_id!r}", "not_found_error"),
                                status_code=404)
        return JSONResponse({"removed": fault_id})

    @router.delete("/admin/faults")
    async def clear_faults(request: Request) -> JSONResponse:
        return _denied(request, admin_token) or JSONResponse({"removed": faults.clear()})

    return router
