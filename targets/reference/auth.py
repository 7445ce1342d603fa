"""API-key check of the OpenAI routes (`serve --api-key KEY`), as vLLM's `--api-key` does it.

A pure ASGI middleware around the outermost app (the router's fast path answers the OpenAI
POST routes before the FastAPI app, so a FastAPI dependency would not see them): a request to
`/v1/...` without `Authorization: Bearer KEY` gets 401 with an OpenAI-style JSON error;
`/health`, `/metrics` and `/admin` (which has its own token) pass through untouched.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .api import error_body

__all__ = ["ASGIApp", "BearerAuth", "require_api_key"]

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_PREFIX = "/v1"


class BearerAuth:
    """Answers 401 to `/v1/*` requests that lack `Authorization: Bearer <api_key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key: empty; give the key clients must send")
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == _PREFIX or path.startswith(_PREFIX + "/"):
            given = _header(scope, b"authorization")
            if given is None or not hmac.compare_digest(given, self._expected):
                # never echo what was sent: it may be someone's real key
                message = ("missing API key: send the header `Authorization: Bearer KEY`"
                           if given is None else "invalid API key")
                await _unauthorized(send, message)
                return
        await self.app(scope, receive, send)


def require_api_key(app: ASGIApp, api_key: str | None) -> ASGIApp:
    """`app` behind BearerAuth when `api_key` is given, else `app` itself."""
    return BearerAuth(app, api_key) if api_key else app


def _header(scope: Any, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


async def _unauthorized(send: Any, message: str) -> None:
    body = json.dumps(error_body(message, "invalid_request_error",
                                 code="invalid_api_key")).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": body})
