"""Network faults through a Toxiproxy-compatible API: an in-memory stand-in for the API calls,
and the project's chaos proxy for the effect on traffic."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import httpx
import pytest

from harness.errors import UsageError
from harness.faults import ProxyDown, Toxic
from harness.faults.base import Ledger
from harness.launcher import ServerProcess
from harness.target import Target

from .conftest import ChaosProxy, ToxiproxyStub

NOWHERE = Target("http://127.0.0.1:9")


def test_toxic_added_and_removed(toxiproxy: ToxiproxyStub) -> None:
    fault = Toxic(toxiproxy.url, "llm", "latency", {"latency": 300, "jitter": 50})
    fault.validate(NOWHERE)
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    (toxic,) = toxiproxy.toxics()
    assert toxic["type"] == "latency" and toxic["attributes"] == {"latency": 300, "jitter": 50}
    assert toxic["name"] == effect.value["toxic"]
    fault.revert(NOWHERE, effect)
    assert toxiproxy.toxics() == []
    fault.revert(NOWHERE, effect)  # idempotent (404 is fine)


def test_proxy_down_and_up(toxiproxy: ToxiproxyStub) -> None:
    fault = ProxyDown(toxiproxy.url, "llm")
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    assert toxiproxy.proxies["llm"]["enabled"] is False
    fault.revert(NOWHERE, effect)
    assert toxiproxy.proxies["llm"]["enabled"] is True


def test_validate_names_what_is_wrong(toxiproxy: ToxiproxyStub) -> None:
    with pytest.raises(UsageError, match="has no proxy 'nope'"):
        Toxic(toxiproxy.url, "nope", "latency").validate(NOWHERE)
    with pytest.raises(UsageError, match="toxic type 'lag'"):
        Toxic(toxiproxy.url, "llm", "lag").validate(NOWHERE)
    with pytest.raises(UsageError, match="no Toxiproxy-compatible API"):
        Toxic("http://127.0.0.1:9", "llm", "latency").validate(NOWHERE)


def test_toxic_on_the_chaos_proxy_slows_the_target(
        fleet: tuple[ServerProcess, Target],
        chaos_proxy: Callable[[str], ChaosProxy]) -> None:
    _, target = fleet
    proxy = chaos_proxy(target.url.removeprefix("http://"))
    via = f"http://{proxy.listen}/v1/completions"
    body = {"model": "sim", "prompt": "x", "max_tokens": 2}

    def elapsed() -> float:
        start = time.monotonic()
        assert httpx.post(via, json=body, timeout=10).status_code == 200
        return time.monotonic() - start

    fault = Toxic(proxy.url, "llm", "latency", {"latency": 700})
    fault.validate(target)
    effect = fault.inject(target, random.Random(0), Ledger(fault.name, 30))
    (toxic,) = proxy.toxics()
    assert toxic["ttl"] == 30  # also removed by the proxy itself at its TTL
    assert elapsed() >= 0.7
    fault.revert(target, effect)
    assert proxy.toxics() == [] and elapsed() < 0.7

    down = ProxyDown(proxy.url, "llm")
    effect = down.inject(target, random.Random(0), Ledger(down.name, 30))
    with pytest.raises(httpx.TransportError):
        httpx.post(via, json=body, timeout=3)
    down.revert(target, effect)
    assert elapsed() < 0.7
