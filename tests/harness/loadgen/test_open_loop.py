"""Open loop: requests are due on a seeded schedule; a record keeps due time and send time."""

from __future__ import annotations

import itertools
import statistics

import pytest

from harness.launcher import ServerProcess

from .conftest import LOCUSTFILES, RunLocust

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo


def _lags(run_dir_records: list[dict[str, object]]) -> list[tuple[float, float]]:
    out = []
    for rec in run_dir_records:
        value = rec["value"]
        assert isinstance(value, dict)
        out.append((value["scheduled_at"], value["sent_at"] - value["scheduled_at"]))
    return sorted(out)


def test_poisson_above_capacity_shows_growing_lag(sim_worker: ServerProcess,
                                                  run_locust: RunLocust) -> None:
    # 2 users, each request ~0.13 s: about 15 requests/s at most; ask for 60/s.
    run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "2", "-r",
                     "2", "-t", "4s", "--host", sim_worker.url, "--arrival", "poisson",
                     "--rate", "60", "--seed", "3")
    assert run.code == 0, run.output[-3000:]
    lags = _lags(run.records())
    assert len(lags) > 20
    quarter = len(lags) // 4
    early = statistics.median(lag for _, lag in lags[:quarter])
    late = statistics.median(lag for _, lag in lags[-quarter:])
    # The backlog grows by ~(60 - 15) requests/s: due times run ahead of send times.
    assert late > early + 0.5, (early, late)
    assert min(lag for _, lag in lags) >= -0.001  # never sent before it was due


def test_poisson_below_capacity_keeps_up(sim_worker: ServerProcess,
                                         run_locust: RunLocust) -> None:
    run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "8", "-r",
                     "8", "-t", "4s", "--host", sim_worker.url, "--arrival", "constant",
                     "--rate", "10", "--seed", "3")
    assert run.code == 0, run.output[-3000:]
    lags = _lags(run.records())
    assert 30 <= len(lags) <= 45  # 10/s for 4 s (+ the one due at the start)
    assert statistics.median(lag for _, lag in lags) < 0.01
    due = [t for t, _ in lags]
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert all(abs(g - 0.1) < 1e-6 for g in gaps)  # constant rate: exactly 1/rate apart
