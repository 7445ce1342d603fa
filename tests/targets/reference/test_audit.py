"""The router's audit log: the writer in-process (group commit, rotation, crash recovery,
failure), then a fleet with --audit-log as real processes (records of every outcome, output
hashes, secrets, fail-closed and fail-open)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.audit import verify
from harness.launcher import ServerProcess, free_port, start_fleet
from targets.reference.audit import (
    AuditLog,
    AuditSettings,
    AuditUnavailable,
    log_files,
    redact,
    text_sha256,
)

TOKEN = "test-admin-token"
SECRET = "sk-proj-Zx81QmT4vLp0aR7sK2dW9yB3"


def records(path: Path) -> list[dict[str, Any]]:
    out = []
    for file in log_files(path):
        for line in file.read_bytes().split(b"\n"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def open_log(path: Path, **kw: Any) -> AuditLog:
    log = AuditLog(AuditSettings(path=path, **kw))
    log.open()
    return log


# -- the writer, in-process ---------------------------------------------------------------------


def test_group_commit_chain_and_durability(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def main() -> AuditLog:
        log = open_log(path)
        trails = [log.accept(f"r{i}", "/v1/completions",
                             json.dumps({"model": "m", "prompt": f"p{i}"}).encode(), "1.2.3.4:5")
                  for i in range(200)]
        for t in trails:
            t.pieces.append("out")
        await asyncio.gather(*(t.finish("completed", http_status=200) for t in trails))
        # every finish returned only once its record was written
        assert log.durable_seq == log.records
        log.close()
        return log

    log = asyncio.run(main())
    assert log.batches < 200, "records share fsyncs"
    report = verify([path])
    assert report.ok, report.summary()
    assert report.requests == 200 and report.by_type["completed"] == 200 and not report.in_doubt
    done = [r for r in records(path) if r["type"] == "completed"]
    assert all(r["output_sha256"] == text_sha256("out") and "output" not in r for r in done)


def test_rotation_keeps_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def main() -> None:
        log = open_log(path, max_bytes=4096)
        for i in range(60):
            trail = log.accept(f"r{i}", "/v1/completions", b'{"model":"m","prompt":"x"}', None)
            await trail.finish("completed", http_status=200)
        log.close()

    asyncio.run(main())
    files = log_files(path)
    assert len(files) > 3 and files[-1] == path and files[0].name == "audit.jsonl.1"
    report = verify([path])
    assert report.ok and report.requests == 60 and len(report.files) == len(files)
    # a missing middle file breaks the chain, and verify names where
    files[1].unlink()
    report = verify([path])
    assert not report.ok and "missing" in str(report.first_broken)


def test_crash_recovery_torn_line_and_in_doubt(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def crashed_run() -> None:
        log = open_log(path)
        done = log.accept("done", "/v1/completions", b'{"model":"m","prompt":"a"}', None)
        await done.finish("completed", http_status=200)
        log.accept("open-1", "/v1/completions", b'{"model":"m","prompt":"b"}', None)
        seq = log.accept("open-2", "/v1/completions", b'{"model":"m","prompt":"c"}', None)
        await log.durable(seq.accepted_seq)
        # the process dies here: no shutdown record, the writer thread is abandoned

    asyncio.run(crashed_run())
    with open(path, "ab") as fh:
        fh.write(b'{"accepted_seq":3,"attempts":1,"dura')  # a write torn by the crash
    before = verify([path])
    assert before.ok and len(before.torn) == 1 and before.torn[0]["recovered_by"] is None
    assert {d["request_id"] for d in before.in_doubt} == {"open-1", "open-2"}

    log = open_log(path)
    first = next(r for r in records(path) if r["type"] == "recovery")
    assert first["torn"]["bytes"] == len(b'{"accepted_seq":3,"attempts":1,"dura')
    assert [d["request_id"] for d in first["in_doubt"]] == ["open-1", "open-2"]

    async def next_run() -> None:
        trail = log.accept("after", "/v1/completions", b'{"model":"m","prompt":"d"}', None)
        await trail.finish("completed", http_status=200)
        log.close()

    asyncio.run(next_run())
    report = verify([path])
    assert report.ok, report.summary()
    assert report.torn[0]["recovered_by"] == first["seq"]
    assert all(d["declared"] for d in report.in_doubt) and len(report.in_doubt) == 2
    # a second restart does not declare them again, and a clean shutdown is no crash
    open_log(path).close()
    assert records(path)[-2]["type"] == "start" and verify([path]).ok


def test_write_failure_fails_closed_and_open(tmp_path: Path) -> None:
    alerts: list[str] = []

    async def run(fail_open: bool) -> AuditLog:
        log = AuditLog(AuditSettings(path=tmp_path / f"open-{fail_open}.jsonl",
                                     fault_after=3, fail_open=fail_open), alert=alerts.append)
        log.open()
        ok = log.accept("a", "/v1/completions", b"{}", None)
        await ok.finish("completed", http_status=200)  # records 2 and 3
        doomed = log.accept("b", "/v1/completions", b"{}", None)
        if fail_open:
            await doomed.finish("completed", http_status=200)
            log.accept("c", "/v1/completions", b"{}", None)
        else:
            with pytest.raises(AuditUnavailable):
                await doomed.finish("completed", http_status=200)
            with pytest.raises(AuditUnavailable, match="No space left"):
                log.accept("c", "/v1/completions", b"{}", None)
        log.close()
        return log

    closed = asyncio.run(run(False))
    assert closed.failure and "failing closed" in alerts[0]
    opened = asyncio.run(run(True))
    assert opened.unaudited == 2 and "UNAUDITED" in alerts[1]
    assert verify([tmp_path / "open-False.jsonl"]).ok


def test_redaction() -> None:
    text = (f"use Authorization: Bearer {SECRET} and api_key={SECRET[3:]} or "
            "hf_abcdefghijklmnopqrstu and AKIAABCDEFGHIJKLMNOP; keep max_tokens=5")
    out = redact(text)
    for secret in (SECRET, SECRET[3:], "hf_abcdefghijklmnopqrstu", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in out
    assert "keep max_tokens=5" in out


def test_canonical_hash_agrees_with_the_verifier(tmp_path: Path) -> None:
    from harness.audit import chain
    from targets.reference import audit

    path = tmp_path / "audit.jsonl"

    async def main() -> None:
        log = open_log(path, content="full")
        trail = log.accept("é-ü-😀", "/v1/chat/completions", json.dumps(
            {"model": "m", "temperature": 0.7, "messages": [{"role": "user",
                                                            "content": "naïve 😀 \u2028"}]}
        ).encode(), None)
        trail.pieces.append("ß 😀")
        await trail.finish("completed", http_status=200)
        log.close()

    asyncio.run(main())
    for record in records(path):
        assert chain.canonical(record) == audit.canonical(record)
        assert chain.record_hash(record) == audit.record_hash(record) == record["hash"]
    assert chain.text_sha256("ß 😀") == audit.text_sha256("ß 😀") == \
        hashlib.sha256("ß 😀".encode()).hexdigest()


# -- a fleet with --audit-log, real processes ---------------------------------------------------


@pytest.fixture
def audited_fleet(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def factory(audit: Path, *args: str) -> ServerProcess:
        port = free_port()
        proc = start_fleet("--model", "sim", "--worker-arg=--sim-ttft=0.02",
                           "--worker-arg=--sim-itl=0.005", *args,
                           log_path=tmp_path / f"fleet-{port}.log", admin_token=TOKEN,
                           audit_log=audit, port=port)
        started.append(proc)
        proc.wait_ready(timeout=120)
        return proc

    yield factory
    for proc in started:
        proc.stop()


def stream_text(client: httpx.Client, url: str, body: dict[str, Any], path: str,
                headers: dict[str, str] | None = None) -> tuple[str, bool, list[Any]]:
    """The text a client received from a stream, whether it saw [DONE], and the events."""
    pieces, done, events = [], False, []
    with client.stream("POST", url + path, json=body, headers=headers) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                events.append(event)
                for choice in event.get("choices") or []:
                    pieces.append((choice.get("delta") or {}).get("content")
                                  or choice.get("text") or "")
    return "".join(pieces), done, events


def test_fleet_records_every_outcome(audited_fleet: Any, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    fleet = audited_fleet(audit, "--audit-content", "full", "--worker-capacity", "1",
                          "--max-queue", "0")
    secret_prompt = f"my key is {SECRET}\nAuthorization: Bearer {SECRET}"
    got: dict[str, str] = {}
    with httpx.Client(timeout=30) as client:
        rid = str(uuid.uuid4())
        text, done, events = stream_text(client, fleet.url, {
            "model": "sim", "max_tokens": 12, "stream": True,
            "messages": [{"role": "user", "content": secret_prompt}]},
            "/v1/chat/completions",
            headers={"X-Request-Id": rid, "Authorization": f"Bearer {SECRET}"})
        assert done and text
        assert all("usage" not in e for e in events), "usage was not asked for by the client"
        got[rid] = text
        rid = str(uuid.uuid4())
        text, done, events = stream_text(client, fleet.url, {
            "model": "sim", "max_tokens": 7, "stream": True, "prompt": "complete me",
            "stream_options": {"include_usage": True}}, "/v1/completions",
            headers={"X-Request-Id": rid})
        assert done and events[-1]["usage"]["completion_tokens"] == 7
        got[rid] = text
        rid = str(uuid.uuid4())
        resp = client.post(fleet.url + "/v1/chat/completions", headers={"X-Request-Id": rid},
                           json={"model": "sim", "max_tokens": 5,
                                 "messages": [{"role": "user", "content": "hi"}]})
        got[rid] = resp.json()["choices"][0]["message"]["content"]
        assert client.post(fleet.url + "/v1/chat/completions", json={"model": "nope"}
                           ).status_code == 404
        # the only worker slot is busy and the queue is 0: a 429, audited too
        with client.stream("POST", fleet.url + "/v1/completions", json={
                "model": "sim", "prompt": "x", "max_tokens": 200, "stream": True}) as busy:
            assert busy.status_code == 200
            refused = client.post(fleet.url + "/v1/completions",
                                  json={"model": "sim", "prompt": "y", "max_tokens": 2})
            assert refused.status_code == 429
    # the busy stream's client went away: cancelled
    time.sleep(0.5)
    fleet.stop()
    log = audit.read_text()
    assert SECRET not in log and SECRET[3:] not in log
    report = verify([audit])
    assert report.ok, report.summary()
    assert report.by_type == {"start": 1, "accepted": 6, "completed": 3, "rejected": 2,
                              "cancelled": 1, "shutdown": 1}
    terminal = {r["request_id"]: r for r in records(audit) if r.get("accepted_seq")}
    for rid, text in got.items():
        rec = terminal[rid]
        assert rec["type"] == "completed" and rec["output_sha256"] == text_sha256(text)
        assert rec["output"] == text and rec["worker"] == "sim-1" and rec["attempts"] == 1
        assert rec["output_tokens"] > 0 and rec["prompt_tokens"] > 0
        assert rec["ttft"] is not None and rec["duration"] >= rec["ttft"]
    statuses = sorted(r["http_status"] for r in terminal.values() if r["type"] == "rejected")
    assert statuses == [404, 429]
    accepted = [r for r in records(audit) if r["type"] == "accepted"]
    assert accepted[0]["prompt"][0]["content"].startswith("my key is [REDACTED]")
    assert accepted[0]["client"].startswith("127.0.0.1:")


def test_log_failure_fails_closed(audited_fleet: Any, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    fleet = audited_fleet(audit, "--audit-fault-after", "5")  # start + two requests
    body = {"model": "sim", "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        assert client.get(fleet.url + "/health").status_code == 200
        for _ in range(2):
            assert stream_text(client, fleet.url, body, "/v1/chat/completions")[1]
        # this one's accepted record is the one the disk refuses: its stream never completes
        _, _, events = stream_text(client, fleet.url, body, "/v1/chat/completions")
        assert "error" in events[-1] and "audit log is unavailable" in \
            events[-1]["error"]["message"]
        for _ in range(3):
            resp = client.post(fleet.url + "/v1/chat/completions", json=body)
            assert resp.status_code == 503
            assert "audit log is unavailable" in resp.json()["error"]["message"]
        # not ready while it refuses work: a load balancer must take it out
        health = client.get(fleet.url + "/health")
        assert health.status_code == 503 and "failed closed" in health.json()["audit"]
        metrics = client.get(fleet.url + "/metrics").text
    assert "llm_chaos_audit_available 0.0" in metrics
    assert "ALERT: audit log write failed" in fleet.log_tail(50)
    report = verify([audit])
    assert report.ok and report.by_type.get("completed") == 2


def test_log_failure_can_fail_open(audited_fleet: Any, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    fleet = audited_fleet(audit, "--audit-fault-after", "1", "--audit-fail-open")
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            resp = client.post(fleet.url + "/v1/completions",
                               json={"model": "sim", "prompt": "x", "max_tokens": 3})
            assert resp.status_code == 200
        assert client.get(fleet.url + "/health").status_code == 200  # it serves: ready
        metrics = client.get(fleet.url + "/metrics").text
    assert "llm_chaos_audit_unaudited_requests 3.0" in metrics
    assert "UNAUDITED" in fleet.log_tail(50)


def test_resumable_streams_are_audited(audited_fleet: Any, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    fleet = audited_fleet(audit, "--resume-streams")
    rid = str(uuid.uuid4())
    with httpx.Client(timeout=30) as client:
        text, done, events = stream_text(client, fleet.url, {
            "model": "sim", "max_tokens": 9, "stream": True,
            "messages": [{"role": "user", "content": "resume me"}]}, "/v1/chat/completions",
            headers={"X-Request-Id": rid})
    assert done and text and all("usage" not in e for e in events)
    fleet.stop()
    assert verify([audit]).ok
    (rec,) = [r for r in records(audit) if r["type"] == "completed"]
    assert rec["request_id"] == rid and rec["output_sha256"] == text_sha256(text)
    assert rec["output_tokens"] == 9 and rec["output_tokens_source"] == "usage"
