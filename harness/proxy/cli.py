"""`llm-chaos proxy`: run the chaos proxy (its own process) with its control API."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn

from ..errors import UsageError
from .api import create_app
from .proxy import ApiError, ProxyCollection, ProxyConfig, split_address

__all__ = ["API_KEEP_ALIVE_S", "add_parser", "run", "serve"]

# The control API keeps an idle connection longer than its clients do (httpx: 5 s); uvicorn's
# default of 5 s would close it just as a client reuses it, and that request would be lost.
API_KEEP_ALIVE_S = 65


def add_parser(sub: Any) -> None:
    """Register `proxy` on the top-level parser."""
    p = sub.add_parser(
        "proxy", help="run the chaos proxy (TCP, toxics, Toxiproxy-compatible API)",
        description="A TCP proxy with toxics (latency, bandwidth, slicer, slow_close, timeout, "
                    "reset_peer, limit_data, and the SSE-aware sse_stall, sse_cut, "
                    "sse_drop_done), controlled through Toxiproxy's HTTP API on --api.")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address of a first proxy (needs --upstream)")
    p.add_argument("--upstream", metavar="HOST:PORT", help="where that proxy forwards to")
    p.add_argument("--name", default="llm", help="name of that proxy in the API")
    p.add_argument("--api", default="127.0.0.1:8474", metavar="HOST:PORT",
                   help="address of the control API (Toxiproxy's default port is 8474)")
    p.add_argument("--config", type=Path, metavar="JSON",
                   help="a JSON array of proxies to create at start (like Toxiproxy -config)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the per-connection random draws (toxicity, jitter, slices)")
    p.set_defaults(run=run)


def _initial(args: argparse.Namespace) -> list[ProxyConfig]:
    configs: list[ProxyConfig] = []
    try:
        if args.config is not None:
            data = json.loads(args.config.read_text())
            if not isinstance(data, list):
                raise UsageError(f"{args.config}: expected a JSON array of proxies")
            configs += [ProxyConfig.from_json(item) for item in data]
        if (args.listen is None) != (args.upstream is None):
            raise UsageError("--listen and --upstream go together")
        if args.listen is not None:
            configs.append(ProxyConfig(args.name, args.listen, args.upstream))
        split_address(args.api)
    except ApiError as exc:
        raise UsageError(str(exc)) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{args.config}: {exc}") from exc
    return configs


async def serve(configs: list[ProxyConfig], api: str, seed: int) -> None:
    """Run the proxies and the API until SIGINT/SIGTERM."""
    proxies = ProxyCollection(seed=seed)
    try:
        for config in configs:
            proxy = await proxies.add(config)
            print(f"llm-chaos proxy: {proxy.config.name} {proxy.config.listen} -> "
                  f"{proxy.config.upstream}", flush=True)
        host, port = split_address(api)
        server = uvicorn.Server(uvicorn.Config(create_app(proxies), host=host, port=port,
                                               log_level="warning", lifespan="off",
                                               access_log=False,
                                               timeout_keep_alive=API_KEEP_ALIVE_S))
        print(f"llm-chaos proxy: API on http://{host}:{port}", flush=True)
        await server.serve()
    finally:
        await proxies.close()


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, this is a fallback
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(args: argparse.Namespace) -> int:
    """The `llm-chaos proxy` command."""
    configs = _initial(args)
    # the timer thread must get the GIL back within a fraction of a millisecond of a deadline
    sys.setswitchinterval(0.0005)
    loop = _loop_factory()
    try:
        loop.run_until_complete(serve(configs, args.api, args.seed))
    except ApiError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        loop.close()
    return 0
