"""Network faults through a Toxiproxy-compatible API: an in-memory stand-in for the API calls,
and the project's chaos proxy for the effect on traffic."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import httpx
import pytest

from harness.errors import UsageError
from harness.faults import ProxyDown, ToxicFault
from harness.faults.base import Ledger
from harness.launcher import ServerProcess
from harness.target import Target

from .conftest import ChaosProxy, ToxiproxyStub

NOWHERE = Target("http://127.0.0.1:9")


def test_toxic_added_and_removed(toxiproxy: ToxiproxyStub) -> None:
    fault = ToxicFault(toxiproxy.url, "llm", "latency", {"latency": 300, "jitter": 50})
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
        ToxicFault(toxiproxy.url, "nope", "latency").validate(NOWHERE)
    with pytest.raises(UsageError, match="toxic type 'lag'"):
        ToxicFault(toxiproxy.url, "llm", "lag").validate(NOWHERE)
    with pytest.raises(UsageError, match="no Toxiproxy-compatible API"):
        ToxicFault("http://127.0.0.1:9", "llm", "latency").validate(NOWHERE)


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

    fault = ToxicFault(proxy.url, "llm", "latency", {"latency": 700})
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


def test_every_toxic_of_the_proxy_can_be_named_in_an_experiment() -> None:
    from harness.experiment import TOXIC_ATTRIBUTES, parse_experiment
    from harness.faults.network import TOXIC_TYPES
    from harness.proxy.toxics import KINDS
    from harness.runner.faults import build_steps

    assert set(TOXIC_TYPES) == set(KINDS) == set(TOXIC_ATTRIBUTES)
    for kind, spec in KINDS.items():
        assert set(TOXIC_ATTRIBUTES[kind]) == set(spec.defaults), kind
    experiment = parse_experiment(
        "target: {url: 'http://127.0.0.1:8000'}\nload: {duration: 5}\nfaults:\n"
        "  - {kind: network-sse_cut, attributes: {events: 3}, at: 1, for: 2}\n"
        "  - {kind: network-sse_stall, at: 1, for: 2}\n"
        "  - {kind: network-sse_drop_done, at: 1, for: 2}\n")
    faults = [step.fault for step in build_steps(experiment)]
    assert [(f.type, dict(f.attributes)) for f in faults] == [
        ("sse_cut", {"events": 3}), ("sse_stall", {}), ("sse_drop_done", {})]
    with pytest.raises(UsageError, match="network-sse_drop_done has no attribute 'events'"):
        parse_experiment("target: {url: 'http://127.0.0.1:8000'}\nload: {duration: 5}\n"
                         "faults: [{kind: network-sse_drop_done, attributes: {events: 1}}]\n")


def test_stream_toxics_cut_and_unterminate_streams_through_the_chaos_proxy(
        fleet: tuple[ServerProcess, Target],
        chaos_proxy: Callable[[str], ChaosProxy]) -> None:
    _, target = fleet
    proxy = chaos_proxy(target.url.removeprefix("http://"))
    body = {"model": "sim", "messages": [{"role": "user", "content": "x"}], "max_tokens": 12,
            "stream": True}

    def stream() -> list[str]:
        """The data lines of one streamed answer through the proxy, as far as they came."""
        lines: list[str] = []
        try:
            with httpx.stream("POST", f"http://{proxy.listen}/v1/chat/completions", json=body,
                              timeout=10) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        lines.append(line)
        except httpx.RemoteProtocolError:  # closed mid-body: what a cut looks like
            pass
        return lines

    whole = stream()
    assert whole[-1] == "data: [DONE]" and len(whole) > 6
    for kind, attributes, check in (
            ("sse_cut", {"events": 3}, lambda got: len(got) == 3 and "[DONE]" not in got[-1]),
            ("sse_drop_done", {}, lambda got: len(got) == len(whole) - 1
             and all("[DONE]" not in line for line in got))):
        fault = ToxicFault(proxy.url, "llm", kind, attributes)
        fault.validate(target)
        effect = fault.inject(target, random.Random(0), Ledger(fault.name, 30))
        got = stream()
        assert check(got), (kind, got)
        fault.revert(target, effect)
        assert stream()[-1] == "data: [DONE]", kind
