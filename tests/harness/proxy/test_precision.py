"""A 200 ms downstream latency toxic adds 200 ms to time to first token and nothing to ITL."""

from __future__ import annotations

import statistics

import pytest

from harness.bench.proxy import interleaved
from harness.launcher import ServerProcess

from .conftest import Proxy

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo

N = 40


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def test_latency_toxic_adds_exactly_its_latency(fresh: Proxy,
                                                sim_worker: ServerProcess) -> None:
    url = "http://" + fresh.create("precise", sim_worker.url.removeprefix("http://"))
    fresh.toxic("precise", type="latency", attributes={"latency": 200})
    direct, proxied = interleaved(sim_worker.url, url, N, 6)
    ttft_d = [t.ttft * 1000 for t in direct]
    ttft_p = [t.ttft * 1000 for t in proxied]
    added = {q: _pct(ttft_p, q) - _pct(ttft_d, q) for q in (0.5, 0.9, 0.99)}
    itl_change = (statistics.median(g for t in proxied for g in t.itl)
                  - statistics.median(g for t in direct for g in t.itl)) * 1000
    print(f"TTFT added (ms): {', '.join(f'p{q * 100:g} {v:.2f}' for q, v in added.items())};"
          f" ITL change at p50 {itl_change:.3f} ms")
    # The goal is 200 +/- 1 ms (`llm-chaos bench proxy` judges it at p99 on 200 requests).
    # Here the machine is shared: each delayed chunk needs two extra wake-ups (timer thread,
    # event loop), and under a load of 3-4 on 2 cores the median was seen 1.4 ms late once;
    # p99 of 40 samples is the slowest one, moved by tens of ms by a single slow request.
    assert abs(added[0.5] - 200) <= 2.0
    assert abs(added[0.9] - 200) <= 5.0
    assert abs(itl_change) <= 0.5
