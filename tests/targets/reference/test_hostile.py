"""Acceptance (issue 21): hostile input to a router with its audit log on. A fixed corpus of the
kinds an attacker tries (nesting 100,000 deep, non-object fields, the router's internal
`continuation`, broken encodings, wrong types, oversized bodies, odd content types) plus
Hypothesis-made bodies, more than 3000 requests 16 at a time: no answer >= 500, every refusal a
JSON error naming the problem, `audit verify` passes with exactly one final record per request,
and normal traffic is served afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.audit import verify
from harness.launcher import start_fleet

TOKEN = "hostile-test-token"
CHAT = "/v1/chat/completions"
VALID: dict[str, Any] = {"model": "sim", "messages": [{"role": "user", "content": "hi there"}],
                         "max_tokens": 2}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    logs = tmp_path_factory.mktemp("hostile")
    audit = logs / "audit.jsonl"
    proc = start_fleet("--model", "sim", "--workers", "2", "--resume-streams",
                       # short streams: a hostile request that is valid after all costs little
                       "--worker-arg=--sim-ttft=0.002", "--worker-arg=--sim-itl=0.001",
                       "--worker-arg=--max-model-len=256", log_path=logs / "router.log",
                       worker_logs=logs, admin_token=TOKEN, audit_log=audit)
    try:
        proc.wait_ready(timeout=60)
        yield proc.url, audit
    finally:
        proc.stop()


def _with(**change: Any) -> bytes:
    return json.dumps({**VALID, **change}).encode()


def _deep(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


def corpus() -> list[tuple[str, dict[str, str], bytes]]:
    """(name, headers, body) of every fixed hostile case."""
    cases: list[tuple[str, dict[str, str], bytes]] = []
    deep = _deep(100_000)

    def add(name: str, body: bytes | str, **headers: str) -> None:
        cases.append((name, headers, body.encode() if isinstance(body, str) else body))

    # nesting, in and out of the fields the router reads
    add("deep messages", '{"model": "sim", "messages": ' + deep + "}")
    add("deep top level", deep)
    add("deep object", '{"a":' * 50_000 + "1" + "}" * 50_000)
    add("40 levels in an unknown field", '{"model": "sim", "messages": [{"role": "user", '
        '"content": "x"}], "max_tokens": 1, "extra": ' + _deep(40) + "}")
    add("deep stream_options", '{"model": "sim", "stream": true, "messages": [], '
        '"stream_options": ' + _deep(5000, "{}") + "}")
    # stream_options that are not objects
    for value in ("yes", [], [1, 2], 1, True, None, {"include_usage": "yes"}):
        add(f"stream_options={value!r}", _with(stream=True, stream_options=value))
        add(f"stream_options={value!r} unstreamed", _with(stream_options=value))
    # the router's internal field, from a client
    for cont in ({"token_ids": [999999999], "text_sent": 0},
                 {"token_ids": [1, 2], "text_sent": 10**12},
                 {"token_ids": [-1], "text_sent": 0}, {"token_ids": "x", "text_sent": 0},
                 {"token_ids": [1], "text_sent": -5}, "resume", None, [],
                 {"token_ids": [1.5], "text_sent": 0}):
        add(f"continuation={cont!r}", _with(stream=True, continuation=cont))
        add(f"continuation={cont!r} unstreamed", _with(continuation=cont))
    # not JSON, not UTF-8, not an object
    for raw in (b"", b"{", b"not json", b"\xff\xfe\xfd", b'{"model": "sim"', b"[]", b"42",
                b'"string"', b"null", b"true", b'{"model": "\\ud800", "messages": []}',
                b'{"model": "sim", "messages": [{"role": "user", "content": "\\udfff"}]}',
                b'{"model": "sim", "max_tokens": NaN, "messages": []}',
                b'{"model": "sim", "temperature": Infinity, "messages": []}',
                b'{"model": "sim", "model": "other", "messages": []}',
                b"\x00" * 100, "{\"model\": \"sim\u0000\"}".encode()):
        add(f"raw {raw[:30]!r}", raw)
    # wrong types and values in every field
    wrong: list[Any] = [None, -1, 0, 2**70, 1.5, "x", "", [], {}, [None], True, {"a": 1}]
    for fld in ("model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                "top_p", "n", "stream", "stop", "seed", "ignore_eos", "min_tokens", "logprobs",
                "tools", "user", "return_token_ids"):
        for value in wrong:
            add(f"{fld}={value!r}", _with(**{fld: value}))
    for messages in ([{"role": "root", "content": "x"}], [{"content": "x"}],
                     [{"role": "user"}], [{"role": "user", "content": 5}],
                     [{"role": "user", "content": [{"type": "image", "url": "x"}]}],
                     [{"role": "user", "content": [{"type": "text"}]}],
                     [{"role": "user", "content": "x" * 300_000}], ["user"], [[]]):
        add(f"messages={str(messages)[:40]}", _with(messages=messages))
    add("stop x100", _with(stop=["a"] * 100))
    add("model list", _with(model=["sim"]))
    add("prompt on chat", _with(prompt="x"))
    # sizes and content types
    add("9 MB body", _with(messages=[{"role": "user", "content": "x" * 9_000_000}]))
    add("text/plain", _with(), **{"content-type": "text/plain"})
    add("form", _with(), **{"content-type": "application/x-www-form-urlencoded"})
    add("json charset", _with(), **{"content-type": "application/json; charset=utf-8"})
    add("long request id", _with(), **{"x-request-id": "r" * 10_000})
    add("odd request id", _with(), **{"x-request-id": "../../etc/passwd\t;"})
    return cases


def _send(client: httpx.Client, url: str, headers: dict[str, str], body: bytes,
          path: str = CHAT) -> tuple[int, bytes, str | None]:
    resp = client.post(url + path, content=body,
                       headers={"content-type": "application/json", **headers})
    return resp.status_code, resp.content, resp.headers.get("content-type")


def _check(name: str, status: int, content: bytes, ctype: str | None) -> str | None:
    """Why an answer breaks the promise, or None."""
    if status >= 500:
        return f"{name}: {status} {content[:200]!r}"
    if status == 200:
        return None
    if not (ctype or "").startswith("application/json"):
        return f"{name}: {status} without a JSON error ({ctype}): {content[:200]!r}"
    error = json.loads(content).get("error", {})
    if not isinstance(error, dict) or not error.get("message"):
        return f"{name}: {status} error without a message: {content[:200]!r}"
    return None


def test_hostile_requests_get_4xx_and_one_audit_record_each(fleet: tuple[str, Path]) -> None:
    url, audit = fleet
    cases = corpus()
    # the fixed corpus, repeated (half of it streamed where it can be) to pass 3000 requests
    work = [(f"{name} #{i}", headers, body) for i in range(14) for name, headers, body in cases]
    assert len(work) >= 2800, len(work)
    problems: list[str] = []
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=60.0, limits=httpx.Limits(max_connections=16)) as client:

        def one(case: tuple[str, dict[str, str], bytes]) -> tuple[str, int, bytes, str | None]:
            name, headers, body = case
            return (name, *_send(client, url, headers, body))

        with ThreadPoolExecutor(16) as pool:
            for name, status, content, ctype in pool.map(one, work):
                statuses[status] = statuses.get(status, 0) + 1
                problem = _check(name, status, content, ctype)
                if problem is not None:
                    problems.append(problem)
        sent = len(work)

        # Hypothesis: any JSON value in any field of a valid request, and any JSON body
        json_values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
        fields = st.sampled_from(["model", "messages", "max_tokens", "stream", "stream_options",
                                  "continuation", "stop", "temperature", "top_p", "seed", "n",
                                  "ignore_eos", "min_tokens", "max_completion_tokens"])

        @settings(max_examples=400, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.one_of(st.tuples(fields, json_values).map(lambda fv: _with(**{fv[0]: fv[1]})),
                         json_values.map(lambda v: json.dumps(v).encode()),
                         st.binary(max_size=64)))
        def hypothesis_bodies(body: bytes) -> None:
            nonlocal sent
            status, content, ctype = _send(client, url, {}, body)
            sent += 1
            statuses[status] = statuses.get(status, 0) + 1
            problem = _check(f"hypothesis body {body[:80]!r}", status, content, ctype)
            assert problem is None, problem

        hypothesis_bodies()
        assert problems == [], f"{len(problems)} bad answers, e.g. {problems[:5]}"
        assert sent >= 3000
        assert statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if k != 200)
        # normal traffic afterwards, streamed and not
        for stream in (False, True, False, True):
            resp = client.post(url + CHAT, json={**VALID, "stream": stream})
            assert resp.status_code == 200, resp.text
            if stream:
                assert resp.text.rstrip().endswith("data: [DONE]"), resp.text[-200:]
        sent += 4

    report = verify([audit])
    assert report.ok, report.summary()
    finals = sum(report.by_type.get(t, 0)
                 for t in ("completed", "failed", "rejected", "cancelled", "timeout"))
    assert report.by_type.get("accepted") == sent, (report.by_type, sent)
    assert finals == sent and report.requests == sent and not report.in_doubt, report.by_type
