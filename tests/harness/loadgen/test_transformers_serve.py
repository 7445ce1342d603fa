"""Against `transformers serve` (a real server from a dependency): correct TTFT and tokens.

The oracle for TTFT is a timestamping TCP proxy between Locust and the server (same monotonic
clock); token counts are checked against the server's usage and its stream.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from harness.launcher import ServerProcess

from .conftest import LOCUSTFILES, RunLocust
from .tapproxy import tap_proxy

MAX_TOKENS = 8  # plain_chat.py's


def test_ttft_and_tokens_against_transformers_serve(transformers_serve: ServerProcess,
                                                    run_locust: RunLocust,
                                                    model_caches: dict[str, Path]) -> None:
    tiny = str(model_caches["tiny"])
    port = int(transformers_serve.url.rsplit(":", 1)[1])
    with tap_proxy(port) as proxy:
        run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "2",
                         "-r", "2", "-t", "5s", "--host", proxy.url, "--model", tiny,
                         "--tokenizer", tiny)
        oracle = proxy.first_content_times()
    assert run.code == 0, run.output[-3000:]
    records = [r["value"] for r in run.records() if r["type"] == "ok"]
    assert len(records) >= 4, run.output[-3000:]
    diffs = []
    for v in records:
        # transformers serve omits `data: [DONE]`: completed, counted as a deviation.
        assert v["deviations"] == ["no_done"], v
        assert v["finish_reason"] in ("length", "stop")
        assert v["output_tokens_source"] == "usage"
        assert v["output_tokens"] == v["output_tokens_usage"] <= MAX_TOKENS
        if v["finish_reason"] == "length":
            assert v["output_tokens_usage"] == MAX_TOKENS
        # at most one content chunk per token: a random model's byte-fallback token that ends
        # inside a UTF-8 character streams no text until the next one completes it
        assert 1 <= len(v["itl"]) + 1 <= v["output_tokens_usage"]
        assert v["output_tokens_tokenizer"] is not None
        assert v["output_tokens_difference"] == (v["output_tokens_usage"]
                                                 - v["output_tokens_tokenizer"])
        assert v["prompt_tokens"] > 0
        t_req, t_first = oracle[v["request_id"]]
        diffs.append(v["ttft"] - (t_first - t_req))
    median, worst = statistics.median(diffs) * 1e3, max(diffs) * 1e3
    print(f"TTFT - proxy TTFT, ms: median {median:.3f} max {worst:.3f}")
    # Ours starts before the proxy sees the request and sees the token after the proxy does.
    assert min(diffs) > 0
    assert statistics.median(diffs) < 0.002
