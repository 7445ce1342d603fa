"""An HTTP/1.1 keep-alive echo server for the proxy tests: every request's body comes back as
the response body, with the method and path in `X-Echo-Request`.
`python -m tests.harness.proxy.http_echo PORT`; `GET /health` answers 200."""

from __future__ import annotations

import sys

from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, headers={"X-Echo-Request": f"{request.method} "
                                                              f"{request.path_qs}"})


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_get("/health", _health)
    app.router.add_route("*", "/{tail:.*}", _echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None,
                keepalive_timeout=120)
