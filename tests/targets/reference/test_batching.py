"""Continuous batching, seen from outside: a request that arrives mid-generation joins the
running batch at the next step instead of waiting for the first request to finish."""

from __future__ import annotations

import threading
import time

import httpx

from harness.launcher import ServerProcess


def test_second_request_joins_running_batch(tiny_worker: ServerProcess) -> None:
    url = tiny_worker.url
    long_id = "a0000000-0000-4000-8000-000000000001"
    short_id = "b0000000-0000-4000-8000-000000000002"
    # long enough to outlast the short one many times over (it joins after 10 tokens and
    # needs about 20 steps), short enough not to hold a core for a minute beside other tests
    long_body = {"model": "tiny", "max_tokens": 600, "ignore_eos": True, "stream": True,
                 "temperature": 0, "messages": [{"role": "user", "content": "long story"}]}
    short_body = {"model": "tiny", "max_tokens": 20, "ignore_eos": True, "temperature": 0,
                  "messages": [{"role": "user", "content": "short answer"}]}
    mid_stream = threading.Event()
    long_done_at: list[float] = []

    def run_long() -> None:
        seen = 0
        with httpx.Client(timeout=120) as client, client.stream(
            "POST", url + "/v1/chat/completions", json=long_body,
            headers={"X-Request-Id": long_id},
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    seen += 1
                    if seen == 10:
                        mid_stream.set()
        long_done_at.append(time.monotonic())

    thread = threading.Thread(target=run_long)
    thread.start()
    assert mid_stream.wait(60), "the long request never started streaming"
    short = httpx.post(url + "/v1/chat/completions", json=short_body, timeout=60,
                       headers={"X-Request-Id": short_id})
    short_done_at = time.monotonic()
    assert short.status_code == 200
    assert short.json()["usage"]["completion_tokens"] == 20
    thread.join(120)
    assert long_done_at, "the long request did not finish"
    # The short request did not wait for the long one.
    assert short_done_at < long_done_at[0]

    stats = httpx.get(url + "/debug/engine", timeout=10).json()
    records = {r["request_id"]: r for r in stats["finished"]}
    long_rec, short_rec = records[long_id], records[short_id]
    # Admitted while the long one was running, finished before it: decoded in the same steps.
    assert long_rec["admitted_step"] < short_rec["admitted_step"] < long_rec["finished_step"]
    assert short_rec["finished_step"] < long_rec["finished_step"]
    assert short_rec["max_batch"] == 2 and long_rec["max_batch"] >= 2
    assert stats["batch_sizes"].get("2", 0) >= 19
