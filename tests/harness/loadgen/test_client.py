"""The stream client against misbehaving servers: every bad condition is a clear outcome."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from typing import ClassVar

import pytest

from harness.errors import UsageError
from harness.launcher import ServerProcess, free_port
from harness.loadgen.client import Request, StreamClient, discover_model
from harness.loadgen.metrics import summarize
from tests.http_stub import JsonHandler

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


def test_a_finished_answer_without_text_is_noted_as_empty_response() -> None:
    with bad_server() as server:
        out = send(server.url, path="/empty/v1/chat/completions")
        whole = send(server.url, path="/ok/v1/chat/completions")
    assert out.status == "ok" and out.finish_reason == "stop" and out.text == ""
    assert out.deviations == ["empty_response"]
    assert "empty_response" not in whole.deviations


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


class _Recorder(JsonHandler):
    """Answers /v1/models and chat like an OpenAI server that wants `Bearer sk-good`, and
    keeps each request's path and headers; a refusal echoes the key it was sent (some do)."""

    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append((self.command, self.path, dict(self.headers.items())))
        auth = self.headers.get("Authorization", "")
        if auth != "Bearer sk-good":
            self.send_json(401, {"error": {"message": f"Incorrect API key provided: {auth}",
                                         "type": "invalid_request_error",
                                         "code": "invalid_api_key"}})
        elif self.path == "/gw/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": "m1", "object": "model"}]})
        else:
            self.send_json(200, {"choices": [{"message": {"content": "hi"},
                                            "finish_reason": "stop"}]})

    do_GET = _handle
    do_POST = _handle


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_headers_and_key_reach_every_request(recorder: str) -> None:
    client = StreamClient(recorder + "/gw/v1/", timeout=5, api_key="sk-good",
                          headers={"X-Org": "research", "User-Agent": "mine"})
    try:
        assert discover_model(client) == "m1"
        out = client.send(Request("chat", {"model": "m1", "messages": []}, "r1"))
    finally:
        client.close()
    assert out.status == "ok", out.error
    (get, path_get, h_get), (post, path_post, h_post) = _Recorder.seen
    assert (get, path_get, post, path_post) == ("GET", "/gw/v1/models",
                                                "POST", "/gw/v1/chat/completions")
    for headers in (h_get, h_post):
        assert headers["Authorization"] == "Bearer sk-good"
        assert headers["X-Org"] == "research"
    assert h_post["User-Agent"] == "mine"  # a user's header replaces the default


def test_refused_key_is_a_401_with_the_reason_and_never_the_key(recorder: str) -> None:
    client = StreamClient(recorder + "/gw", timeout=5, api_key="sk-wrong-123")
    try:
        out = client.send(Request("chat", {"model": "m1", "messages": []}, "r1"))
        with pytest.raises(UsageError) as err:
            discover_model(client)
    finally:
        client.close()
    assert out.status == "http_error" and out.http_status == 401
    assert out.error is not None and "Incorrect API key provided" in out.error
    message = str(err.value)
    assert "GET " + recorder + "/gw/v1/models answered HTTP 401" in message
    assert "--model NAME" in message and "--api-key" in message
    assert "sk-wrong-123" not in out.error and "sk-wrong-123" not in message
    assert "[redacted]" in out.error


def test_model_discovery_names_an_unreachable_target() -> None:
    client = StreamClient(f"http://127.0.0.1:{free_port()}", timeout=2, connect_timeout=2)
    with pytest.raises(UsageError, match=r"cannot reach the target.*give it with --model NAME"):
        discover_model(client)
