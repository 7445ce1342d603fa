"""The chaos proxy: a TCP proxy with toxics and Toxiproxy's HTTP API (`llm-chaos proxy`)."""

from __future__ import annotations

from .api import VERSION, create_app
from .proxy import ApiError, Proxy, ProxyCollection, ProxyConfig
from .toxics import KINDS, Chunk, Toxic, ToxicConfig

__all__ = [
    "KINDS",
    "VERSION",
    "ApiError",
    "Chunk",
    "Proxy",
    "ProxyCollection",
    "ProxyConfig",
    "Toxic",
    "ToxicConfig",
    "create_app",
]
