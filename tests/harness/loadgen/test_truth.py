"""Truth: what the users record agrees with the simulated engine's own record of each request.

The engine (TTFT 50 ms, ITL 10 ms, 32 tokens) records when it received each request and when it
emitted each token, on the same monotonic clock as our records. With 16 users, the first-token
arrival and every inter-token gap we record must match its emissions within 1 ms at the median
and at p99 within 2 ms plus the machine's own wake-up lateness (p99) measured beside the run
(`lateness.py`, same priority, same seconds): about 0.1 ms on a quiet machine, more where other
processes or the hypervisor take the CPU. Token counts must be exact.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.launcher import ServerProcess

from .conftest import LOCUSTFILES, RunLocust, locust_env

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo

USERS = 16
TOKENS = 32


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def compare(records: list[dict[str, Any]], url: str) -> dict[str, list[float]]:
    """Errors (recorded - engine), in seconds, of each measured quantity."""
    errs: dict[str, list[float]] = {"first_token": [], "gap": [], "ttft_vs_engine": [],
                                    "start_to_received": []}
    with httpx.Client(base_url=url, timeout=10) as client:
        for rec in records:
            value = rec["value"]
            trace = client.get(f"/debug/sim/trace/{value['request_id']}").json()
            emitted = trace["emitted"]
            assert trace["tokens"] == TOKENS
            assert value["output_tokens_usage"] == TOKENS
            assert value["output_tokens_tokenizer"] == TOKENS
            assert value["output_tokens"] == TOKENS and value["output_tokens_difference"] == 0
            assert len(value["itl"]) == TOKENS - 1
            first = value["sent_monotonic"] + value["ttft"]
            errs["first_token"].append(first - emitted[0])
            gaps = [b - a for a, b in itertools.pairwise(emitted)]
            errs["gap"] += [ours - theirs for ours, theirs in zip(value["itl"], gaps,
                                                                    strict=True)]
            errs["ttft_vs_engine"].append(value["ttft"] - (emitted[0] - trace["received_at"]))
            errs["start_to_received"].append(trace["received_at"] - value["sent_monotonic"])
    return errs


def warm_up(url: str) -> None:
    """A few requests first, so the first measured ones do not pay the server's cold start."""
    body = {"model": "sim", "messages": [{"role": "user", "content": "warm up"}],
            "max_tokens": 4, "stream": True}
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(4):
            client.post("/v1/chat/completions", json=body).raise_for_status()


def lateness(prefix: list[str], seconds: float, log: Path) -> ServerProcess:
    """The wake-up lateness probe, at the timing test's priority, for `seconds`."""
    return ServerProcess([*prefix, sys.executable, "-m", "tests.harness.loadgen.lateness",
                          str(seconds)], "", log, env=locust_env())


def measure(url: str, run_locust: RunLocust, attempt: int, prefix: list[str], logs: Path
            ) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]], float]:
    probe = lateness(prefix, 6.0, logs / f"lateness-{attempt}.log")
    try:
        run = run_locust("-f", str(LOCUSTFILES / "truth.py"), "--headless", "-u", str(USERS),
                         "-r", str(USERS), "-t", "5s", "--host", url, "--seed", str(attempt),
                         prefix=prefix)
        probe.popen.wait(timeout=30)
    finally:
        probe.stop()
    noise = float(json.loads(probe.log_path.read_text().splitlines()[-1])["p99"])
    assert run.code == 0, run.output[-3000:]
    records = run.records()
    ok = [r for r in records if r["type"] == "ok"]
    # Requests cut by the end of the run are `info`/interrupted; nothing else may be missing.
    assert {r["value"]["status"] for r in records} <= {"ok", "interrupted"}
    assert len(ok) >= 5 * USERS
    errs = compare(ok, url)
    figures = {name: (quantile([abs(e) for e in v], 0.5), quantile([abs(e) for e in v], 0.99))
               for name, v in errs.items()}
    print(f"attempt {attempt}: |error| in ms (p50, p99):",
          {k: (round(a * 1e3, 3), round(b * 1e3, 3)) for k, (a, b) in figures.items()},
          f"; wake-up lateness p99 {noise * 1e3:.3f} ms")
    return errs, figures, noise


def test_recorded_timings_match_the_engine(timed_sim: tuple[ServerProcess, list[str]],
                                           run_locust: RunLocust, tmp_path: Path) -> None:
    sim, prefix = timed_sim
    warm_up(sim.url)
    # Up to five runs: CPU contention from other processes on a small machine shows up as
    # late deliveries in the tail, at times for several runs in a row (three of three, once, on
    # a 2-core AVX2 EPYC: first token p99 3.7 ms against a bound of 2.95); a systematic client
    # error (buffering, a late clock read) fails every run.
    for attempt in range(5):
        errs, figures, noise = measure(sim.url, run_locust, attempt, prefix, tmp_path)
        # Causality: our start is before the engine got the request, our arrival after it
        # emitted the token.
        assert min(errs["start_to_received"]) > 0
        assert min(errs["first_token"]) > 0
        assert min(errs["ttft_vs_engine"]) > 0
        # Medians hold on any machine: no retry for them.
        assert figures["first_token"][0] <= 0.001, figures
        assert figures["gap"][0] <= 0.001, figures
        bound = 0.002 + noise
        if figures["first_token"][1] <= bound and figures["gap"][1] <= bound:
            return
    raise AssertionError(f"p99 error above 2 ms + the machine's wake-up lateness "
                         f"({noise * 1e3:.3f} ms) in all five runs: {figures}")
