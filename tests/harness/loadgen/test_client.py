"""The stream client against misbehaving servers: every bad condition is a clear outcome."""

from __future__ import annotations

import uuid

import pytest

from harness.launcher import ServerProcess, free_port
from harness.loadgen.client import Request, StreamClient
from harness.loadgen.metrics import summarize

from .badserver import bad_server

BODY = {"model": "bad", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}


def send(url: str, path: str | None = None, body: dict[str, object] | None = None):
    client = StreamClient(url, timeout=5.0, connect_timeout=2.0)
    try:
        return client.send(Request("chat", body or BODY, str(uuid.uuid4()), path=path))
    finally:
        client.close()


@pytest.mark.parametrize(("mode", "status", "words"), [
    ("html404", "http_error", ["HTTP 404", "text/html", "404 Not Found"]),
    ("malformed", "malformed_stream", ["not JSON", "{not json"]),
    ("cut", "truncated", ["3 content chunks", "before any finish_reason"]),
    ("rolecut", "truncated", ["0 content chunks"]),
    ("ratelimit", "rate_limited", ["429", "Retry-After: 2", "slow down"]),
    ("errorframe", "error_frame", ["worker died"]),
])
def test_bad_answers_are_failures_with_reasons(mode: str, status: str, words: list[str]) -> None:
    with bad_server() as server:
        out = send(server.url, path=f"/{mode}/v1/chat/completions")
    assert out.status == status, out.error
    for word in words:
        assert word in (out.error or ""), out.error
    if mode == "ratelimit":
        assert out.retry_after == 2.0
    if mode in ("cut", "malformed", "errorframe"):
        assert len(out.content_times) == 3


def test_finish_without_done_completes_as_a_deviation() -> None:
    with bad_server() as server:
        out = send(server.url, path="/nodone/v1/chat/completions")
    assert out.status == "ok"
    assert out.deviations == ["no_done"]
    assert out.text == " one two three"
    assert out.usage_completion == 3


def test_complete_stream_counts_content_chunks_only() -> None:
    with bad_server() as server:
        out = send(server.url, path="/ok/v1/chat/completions")
    assert out.status == "ok" and out.done_seen and not out.deviations
    # the role-only first chunk and the empty finish chunk carry no content
    assert len(out.content_times) == 3
    m = summarize(out, lambda text: len(text.split()))
    assert m.ttft is not None and m.ttft >= 0.01  # first word is sent 10 ms after the role chunk
    assert len(m.itl) == 2 and all(g >= 0.005 for g in m.itl)
    assert m.output_tokens == 3 and m.output_tokens_source == "usage"
    assert m.output_tokens_tokenizer == 3 and m.token_count_difference == 0
    assert m.tpot == pytest.approx((m.e2e - m.ttft) / 2)


def test_unreachable_host_is_a_connect_error() -> None:
    out = send(f"http://127.0.0.1:{free_port()}")
    assert out.status == "connect_error"
    assert "cannot reach" in (out.error or "")
    assert out.http_status is None


@pytest.mark.parametrize(("api", "stream"), [("chat", False), ("completions", False),
                                             ("completions", True)])
def test_against_the_reference_worker(sim_worker: ServerProcess, api: str,
                                      stream: bool) -> None:
    body: dict[str, object] = {"model": "sim", "max_tokens": 5, "stream": stream}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": "hello there"}]
    else:
        body["prompt"] = "hello there"
    if stream:
        body["stream_options"] = {"include_usage": True}
    client = StreamClient(sim_worker.url, timeout=10)
    try:
        out = client.send(Request(api, body, str(uuid.uuid4())))
    finally:
        client.close()
    assert out.status == "ok", out.error
    assert out.usage_completion == 5 and len(out.text.split()) == 5
    assert out.finish_reason == "length"
    m = summarize(out)
    if stream:
        assert out.done_seen and len(out.content_times) == 5 and m.ttft is not None
        assert m.ttft >= 0.05  # the engine's TTFT
    else:
        assert m.ttft is None and m.itl == () and m.e2e >= 0.05 + 4 * 0.01
