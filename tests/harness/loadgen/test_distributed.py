"""Distributed mode: a master and two workers; the master's history holds every request sent."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from harness.launcher import ServerProcess, free_port

from .badserver import bad_server
from .conftest import LOCUST, LOCUSTFILES, RunLocust, locust_env


def test_master_merges_worker_records(run_locust: RunLocust, tmp_path: Path) -> None:
    port = free_port()
    locustfile = str(LOCUSTFILES / "plain_chat.py")
    workers: list[ServerProcess] = []
    with bad_server(("ok",)) as server:
        try:
            for i in range(2):
                workers.append(ServerProcess(
                    [LOCUST, "-f", locustfile, "--worker", "--master-host", "127.0.0.1",
                     "--master-port", str(port)], "", tmp_path / f"worker-{i}.log",
                    env=locust_env()))
            run = run_locust("-f", locustfile, "--master", "--master-bind-host", "127.0.0.1",
                             "--master-bind-port", str(port), "--expect-workers", "2",
                             "--expect-workers-max-wait", "60", "--headless", "-u", "8", "-r",
                             "8", "-t", "4s", "--host", server.url, "--model", "bad",
                             "--csv", str(tmp_path / "csv"), timeout=120)
            for worker in workers:
                worker.popen.wait(timeout=30)
        finally:
            for worker in workers:
                worker.stop()
        sent = server.requests
    logs = "\n".join(w.log_path.read_text() for w in workers)
    assert run.code == 0, run.output[-3000:] + logs[-3000:]
    records = run.records()
    ids = [r["value"]["request_id"] for r in records]
    assert len(ids) == len(set(ids))
    # Every request the server received has exactly one record in the merged history.
    assert len(records) == sent, (len(records), sent, run.output[-2000:])
    by_worker = Counter(r["process"].split(":")[0] for r in records)
    assert set(by_worker) == {"w0", "w1"}, by_worker
    assert {r["value"]["status"] for r in records} <= {"ok", "interrupted"}
    assert sum(r["type"] == "ok" for r in records) > 40
    # Locust's merged Aggregated row and the master's LLM table count each answered request once
    answered = sum(r["value"]["status"] != "interrupted" for r in records)
    for table in ("stats", "llm"):
        with open(tmp_path / f"csv_{table}.csv", newline="") as fh:
            rows = {row["Name"]: row for row in csv.DictReader(fh)}
        assert int(rows["Aggregated"]["Request Count"]) == answered, (table, rows)
