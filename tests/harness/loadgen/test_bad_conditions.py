"""Bad conditions under Locust: each is a recorded failure with a clear reason; no user crashes."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from harness.launcher import free_port

from .badserver import bad_server
from .conftest import LOCUSTFILES, RunLocust

EXPECTED = {
    "html404": ("http_error", "HTTP 404 (text/html): HTML page titled '404 Not Found'"),
    "malformed": ("malformed_stream", "is not JSON"),
    "cut": ("truncated", "before any finish_reason"),
    "rolecut": ("truncated", "0 content chunks"),
    "ratelimit": ("rate_limited", "HTTP 429 rate limited, Retry-After: 2"),
    "errorframe": ("error_frame", "worker died"),
}


def test_misbehaving_server(run_locust: RunLocust) -> None:
    with bad_server((*tuple(EXPECTED), "ok", "nodone")) as server:
        run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "4",
                         "-r", "4", "-t", "3s", "--host", server.url, "--model", "bad")
    assert run.code == 1, run.output[-3000:]  # Locust's exit status when requests failed
    assert "Traceback" not in run.output, run.output[-3000:]
    records = run.records()
    statuses = Counter(r["value"]["status"] for r in records)
    for status, words in EXPECTED.values():
        matching = [r for r in records if r["value"]["status"] == status]
        assert matching, statuses
        assert all(r["type"] == "fail" for r in matching)
        assert any(words in r["value"]["error"] for r in matching), matching[0]["value"]
    no_done = [r for r in records if "no_done" in r["value"]["deviations"]]
    assert no_done and all(r["type"] == "ok" for r in no_done)
    assert all(r["value"]["retry_after"] == 2.0 for r in records
               if r["value"]["status"] == "rate_limited")
    # Users kept going after every failure (waiting 2 s after each 429): more requests than
    # users.
    assert len(records) > 3 * len(EXPECTED), statuses
    # A user waits as long as Retry-After asks before its next request.
    by_user: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["value"]["sent_at"]):
        by_user.setdefault(r["process"], []).append(r)
    waits = [nxt["value"]["sent_at"] - rec["time"] for recs in by_user.values()
             for rec, nxt in itertools.pairwise(recs) if rec["value"]["status"] == "rate_limited"]
    assert waits and min(waits) >= 1.99, waits
    # The failures reach Locust's table with their reason.
    assert "rate_limited: HTTP 429" in run.output


def test_unreachable_host(run_locust: RunLocust) -> None:
    run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "2", "-r",
                     "2", "-t", "2s", "--host", f"http://127.0.0.1:{free_port()}",
                     "--model", "m")
    assert run.code == 1, run.output[-3000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    records = run.records()
    assert len(records) > 2
    assert {r["value"]["status"] for r in records} == {"connect_error"}
    assert all("cannot reach the target" in r["value"]["error"] for r in records)
