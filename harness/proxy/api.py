"""The control API: Toxiproxy's documented HTTP API, same paths, statuses and JSON shapes.

A real Toxiproxy can stand in for this proxy (and this one for it). Our one extension is a
toxic's optional `ttl` (seconds): the toxic removes itself when it expires; Toxiproxy ignores the
field. Errors are `{"error": message, "status": code}` as Toxiproxy sends them.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import UsageError
from .proxy import ApiError, ProxyCollection, ProxyConfig
from .toxics import ToxicConfig

__all__ = ["VERSION", "create_app"]

VERSION = f"llm-chaos-{__version__}"


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ApiError(f"bad request body: {exc}", 400) from exc


def _error(_: Request, exc: Exception) -> Response:
    status = exc.status if isinstance(exc, ApiError) else 400
    return JSONResponse({"error": str(exc), "status": status}, status_code=status)


def create_app(proxies: ProxyCollection) -> Starlette:
    """The ASGI app serving the Toxiproxy API over `proxies` (run in the proxy's event loop)."""

    async def proxy_index(request: Request) -> Response:
        return JSONResponse({name: p.to_json() for name, p in proxies.proxies.items()})

    async def proxy_create(request: Request) -> Response:
        config = ProxyConfig.from_json(await _body(request))
        proxy = await proxies.add(config)
        return JSONResponse(proxy.to_json(), status_code=201)

    async def populate(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, dict) and isinstance(body.get("proxies"), list):
            body = body["proxies"]
        if not isinstance(body, list):
            raise ApiError("bad request body: populate takes a JSON array of proxies", 400)
        configs = [ProxyConfig.from_json(item) for item in body]
        done = await proxies.populate(configs)
        return JSONResponse({"proxies": [p.to_json() for p in done]}, status_code=201)

    async def proxy_show(request: Request) -> Response:
        return JSONResponse(proxies.get(request.path_params["proxy"]).to_json())

    async def proxy_update(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        body = await _body(request)
        if isinstance(body, dict):
            body = {**body, "name": proxy.config.name}
        await proxy.update(ProxyConfig.from_json(body, base=proxy.config))
        return JSONResponse(proxy.to_json())

    async def proxy_delete(request: Request) -> Response:
        await proxies.remove(request.path_params["proxy"])
        return Response(status_code=204)

    async def toxic_index(request: Request) -> Response:
        return JSONResponse(proxies.get(request.path_params["proxy"]).toxics_json())

    async def toxic_create(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        config = ToxicConfig.from_json(await _body(request))
        proxy.add_toxic(config)
        return JSONResponse(config.to_json())

    async def toxic_show(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        return JSONResponse(proxy.toxic(request.path_params["toxic"]).to_json())

    async def toxic_update(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        body = await _body(request)
        if not isinstance(body, dict):
            raise ApiError("bad request body: a toxic must be a JSON object", 400)
        return JSONResponse(proxy.update_toxic(request.path_params["toxic"], body).to_json())

    async def toxic_delete(request: Request) -> Response:
        proxies.get(request.path_params["proxy"]).remove_toxic(request.path_params["toxic"])
        return Response(status_code=204)

    async def reset(request: Request) -> Response:
        await proxies.reset()
        return Response(status_code=204)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    routes = [
        Route("/reset", reset, methods=["POST"]),
        Route("/proxies", proxy_index, methods=["GET"]),
        Route("/proxies", proxy_create, methods=["POST"]),
        Route("/populate", populate, methods=["POST"]),
        Route("/proxies/{proxy}", proxy_show, methods=["GET"]),
        Route("/proxies/{proxy}", proxy_update, methods=["POST", "PATCH"]),
        Route("/proxies/{proxy}", proxy_delete, methods=["DELETE"]),
        Route("/proxies/{proxy}/toxics", toxic_index, methods=["GET"]),
        Route("/proxies/{proxy}/toxics", toxic_create, methods=["POST"]),
        Route("/proxies/{proxy}/toxics/{toxic}", toxic_show, methods=["GET"]),
        Route("/proxies/{proxy}/toxics/{toxic}", toxic_update, methods=["POST", "PATCH"]),
        Route("/proxies/{proxy}/toxics/{toxic}", toxic_delete, methods=["DELETE"]),
        Route("/version", version, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={UsageError: _error})
