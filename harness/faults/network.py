"""Network faults through a Toxiproxy-compatible HTTP API (ours, `llm-chaos proxy`, or a real
Toxiproxy): a toxic on a proxy (latency, bandwidth, slicer, slow_close, timeout, reset_peer,
limit_data; and the stream toxics only our proxy has: sse_stall, sse_cut, sse_drop_done), or
the proxy taken down. Each toxic carries `ttl` (our proxy's extension: it
removes the toxic by itself; a real Toxiproxy ignores the field), and the guard enforces the TTL
too, which is what covers a real Toxiproxy and a proxy taken down."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from ..errors import TargetError, UsageError
from ..target import Target
from .base import Effect, Ledger, one_of, revert_effect
from .heal import EnableProxy, RemoveToxic

__all__ = ["ProxyDown", "ToxicFault"]

SSE_TOXICS = ("sse_stall", "sse_cut", "sse_drop_done")  # our proxy's; Toxiproxy has none
TOXIC_TYPES = ("latency", "bandwidth", "slicer", "slow_close", "timeout", "reset_peer",
               "limit_data", *SSE_TOXICS)


def _call(method: str, url: str, json: Any = None) -> httpx.Response:
    try:
        return httpx.request(method, url, json=json, timeout=5.0)
    except httpx.HTTPError as exc:
        raise TargetError(f"{method} {url} failed: {exc}") from exc


def _check_proxy(api: str, proxy: str) -> None:
    try:
        resp = httpx.get(f"{api}/proxies/{proxy}", timeout=5.0)
    except httpx.HTTPError as exc:
        raise UsageError(f"no Toxiproxy-compatible API at {api} ({exc}); start it "
                         "(`llm-chaos proxy`) or fix the address") from exc
    if resp.status_code != 200:
        raise UsageError(f"the proxy API at {api} has no proxy {proxy!r} "
                         f"({resp.status_code}); create it first")


@dataclass(frozen=True)
class ToxicFault:
    """A toxic of `type` with `attributes` on `proxy` of the API at `api`."""

    api: str
    proxy: str
    type: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    stream: Literal["downstream", "upstream"] = "downstream"
    toxicity: float = 1.0

    @property
    def name(self) -> str:
        return f"network-{self.type}"

    def validate(self, target: Target) -> None:
        one_of("toxic type", self.type, TOXIC_TYPES, " (or ProxyDown for `down`)")
        one_of("toxic stream", self.stream, ("downstream", "upstream"))
        if not 0.0 <= self.toxicity <= 1.0:
            raise UsageError(f"toxic toxicity must be within 0..1, not {self.toxicity}")
        _check_proxy(self.api.rstrip("/"), self.proxy)

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        api = self.api.rstrip("/")
        toxic = f"llm-chaos-{self.type}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}"
        ledger.note(RemoveToxic(api, self.proxy, toxic))
        body = {"name": toxic, "type": self.type, "stream": self.stream,
                "toxicity": self.toxicity, "attributes": dict(self.attributes),
                "ttl": round(max(ledger.ttl, 0.1), 3)}
        resp = _call("POST", f"{api}/proxies/{self.proxy}/toxics", body)
        if resp.status_code != 200:
            hint = (f" ({self.type} is a toxic of `llm-chaos proxy` only; a Toxiproxy has "
                    "none)" if self.type in SSE_TOXICS else "")
            raise TargetError(f"the proxy API refused toxic {body}: {resp.status_code} "
                              f"{resp.text[:200]}{hint}")
        return ledger.effect({"proxy": self.proxy, "toxic": toxic, "type": self.type,
                              "attributes": dict(self.attributes), "stream": self.stream})

    def revert(self, target: Target, effect: Effect) -> None:
        revert_effect(effect)


@dataclass(frozen=True)
class ProxyDown:
    """Disable `proxy` (Toxiproxy's `enabled: false`): connections are refused until revert."""

    api: str
    proxy: str

    @property
    def name(self) -> str:
        return "network-down"

    def validate(self, target: Target) -> None:
        _check_proxy(self.api.rstrip("/"), self.proxy)

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        api = self.api.rstrip("/")
        ledger.note(EnableProxy(api, self.proxy))
        resp = _call("POST", f"{api}/proxies/{self.proxy}", {"enabled": False})
        if resp.status_code != 200:
            raise TargetError(f"could not disable proxy {self.proxy}: {resp.status_code} "
                              f"{resp.text[:200]}")
        return ledger.effect({"proxy": self.proxy, "enabled": False})

    def revert(self, target: Target, effect: Effect) -> None:
        revert_effect(effect)
