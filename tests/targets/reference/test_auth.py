"""`serve --api-key`'s check, in process: /v1/* needs `Authorization: Bearer KEY` (else an
OpenAI-style 401 that never echoes what was sent); /health, /metrics and /admin pass."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from targets.reference.auth import BearerAuth, require_api_key

KEY = "sk-ref-key"


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"reached"})


@pytest.fixture
def client() -> TestClient:
    return TestClient(BearerAuth(_inner, KEY))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/models",
                                  "/v1"])
@pytest.mark.parametrize(("auth", "says"), [
    (None, "missing API key"),
    ("Bearer sk-wrong", "invalid API key"),
    (f"Basic {KEY}", "invalid API key"),
    (f"Bearer {KEY}x", "invalid API key"),
])
def test_openai_routes_need_the_key(client: TestClient, path: str, auth: str | None,
                                    says: str) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    resp = client.post(path, json={"model": "sim"}, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert says in error["message"]
    assert KEY not in resp.text and "sk-wrong" not in resp.text


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"),
                                              ("GET", "/v1/models")])
def test_the_key_passes(client: TestClient, method: str, path: str) -> None:
    resp = client.request(method, path, headers={"authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200 and resp.text == "reached"


@pytest.mark.parametrize("path", ["/health", "/metrics", "/admin/workers", "/v10/x"])
def test_other_routes_are_untouched(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200 and resp.text == "reached"


def test_no_key_means_no_check() -> None:
    assert require_api_key(_inner, None) is _inner
    assert isinstance(require_api_key(_inner, KEY), BearerAuth)
    with pytest.raises(ValueError, match="api_key"):
        BearerAuth(_inner, "")
