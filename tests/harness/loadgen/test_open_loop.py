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


def _open_loop(run_locust: RunLocust, url: str, users: int, arrival: str, rate: float
               ) -> list[tuple[float, float]]:
    """A 4-second open-loop run of `users` users; (due, lag) of each request, by due time."""
    run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", str(users),
                     "-r", str(users), "-t", "4s", "--host", url, "--arrival", arrival,
                     "--rate", f"{rate:g}", "--seed", "3")
    assert run.code == 0, run.output[-3000:]
    return _lags(run.records())


def test_poisson_above_capacity_shows_growing_lag(sim_worker: ServerProcess,
                                                  run_locust: RunLocust) -> None:
    # 2 users, each request ~0.13 s: about 15 requests/s at most; ask for 60/s.
    lags = _open_loop(run_locust, sim_worker.url, 2, "poisson", 60)
    assert len(lags) > 20
    quarter = len(lags) // 4
    early = statistics.median(lag for _, lag in lags[:quarter])
    late = statistics.median(lag for _, lag in lags[-quarter:])
    # The backlog grows by ~(60 - 15) requests/s: due times run ahead of send times.
    assert late > early + 0.5, (early, late)
    assert min(lag for _, lag in lags) >= -0.001  # never sent before it was due


def test_poisson_below_capacity_keeps_up(sim_worker: ServerProcess,
                                         run_locust: RunLocust) -> None:
    lags = _open_loop(run_locust, sim_worker.url, 8, "constant", 10)
    assert 30 <= len(lags) <= 45  # 10/s for 4 s (+ the one due at the start)
    assert statistics.median(lag for _, lag in lags) < 0.01
    due = [t for t, _ in lags]
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert all(abs(g - 0.1) < 1e-6 for g in gaps)  # constant rate: exactly 1/rate apart
