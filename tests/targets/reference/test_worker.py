"""The worker server as a real process: real model answers, streaming shape, errors, health."""

from __future__ import annotations

import httpx
import pytest

from harness.launcher import ServerProcess
from tests.conftest import sse_events


@pytest.mark.smollm2
def test_smollm2_streams_paris_and_done(smollm2_worker: ServerProcess) -> None:
    body = {"model": "smollm2", "temperature": 0, "max_tokens": 24, "stream": True,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", smollm2_worker.url + "/v1/chat/completions", json=body
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]
                   if e["choices"])
    assert "Paris" in text
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_usage_chunk_and_request_id(sim_worker: ServerProcess) -> None:
    rid = "0b8e2a4c-9a4f-4b43-9f0a-6a3b8f1e2d11"
    body = {"model": "sim", "max_tokens": 7, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "count"}]}
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", sim_worker.url + "/v1/chat/completions", json=body,
        headers={"X-Request-Id": rid},
    ) as resp:
        assert resp.headers["x-request-id"] == rid
        events = sse_events(resp)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [e for e in events[1:-1] if e["choices"] and e["choices"][0]["delta"]]
    assert len(content) == 7
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 7
    assert events[-1] == "[DONE]"


def test_non_streaming_completion_and_models(sim_worker: ServerProcess) -> None:
    with httpx.Client(timeout=30) as client:
        models = client.get(sim_worker.url + "/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["sim"]
        out = client.post(sim_worker.url + "/v1/completions",
                          json={"model": "sim", "prompt": "Once upon", "max_tokens": 4}).json()
    assert out["object"] == "text_completion"
    assert out["usage"]["completion_tokens"] == 4
    assert len(out["choices"][0]["text"].split()) == 4


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "sim", "messages": []}, 400, "messages"),
        ({"model": "sim", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
         400, "max_tokens"),
        ({"model": "sim", "messages": [{"role": "user", "content": "x"}],
          "max_tokens": 10**9}, 400, "max_tokens"),
        ({"model": "sim", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
         400, "temperature"),
    ],
)
def test_bad_requests_get_openai_errors(sim_worker: ServerProcess, body: dict[str, object],
                                        status: int, param: str) -> None:
    resp = httpx.post(sim_worker.url + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["param"] == param and param in error["message"]


def test_metrics_use_vllm_names(sim_worker: ServerProcess) -> None:
    httpx.post(sim_worker.url + "/v1/completions",
               json={"model": "sim", "prompt": "x", "max_tokens": 2}, timeout=30)
    text = httpx.get(sim_worker.url + "/metrics", timeout=10).text
    for name in ("vllm:num_requests_running", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:generation_tokens_total",
                 'vllm:request_success_total{finished_reason="length"'):
        assert name in text
