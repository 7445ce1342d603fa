"""Acceptance (issue 21): a request that fails inside the engine fails alone, and the router's
internal `continuation` field is taken only from the router, validated.

The engine test runs the real continuous-batching engine over the tiny model in-process: four
streams decode together while two poisoned sequences join the batch, one whose prefill raises
(a token id outside the vocabulary, as a forged continuation carried) and one that raises in
the middle of its decoding; the four finish untouched."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import httpx

from harness.launcher import start_worker
from targets.reference.engine import BatchEngine
from targets.reference.models import ensure_tiny_folder, load_model
from targets.reference.params import GenerationRequest, Output, SamplingParams

TOKENS = 24


class _Collect:
    def __init__(self) -> None:
        self.outputs: dict[str, list[Output]] = {}
        self.done: dict[str, threading.Event] = {}

    def sink(self, request_id: str) -> Any:
        self.outputs[request_id] = []
        self.done[request_id] = threading.Event()

        def put(out: Output) -> None:
            self.outputs[request_id].append(out)
            if out.finished:
                self.done[request_id].set()
        return put

    def tokens(self, request_id: str) -> int:
        return sum(len(o.token_ids) for o in self.outputs[request_id])

    def last(self, request_id: str) -> Output:
        return self.outputs[request_id][-1]


def test_a_failing_sequence_fails_alone_and_the_batch_goes_on() -> None:
    model, tok = load_model(ensure_tiny_folder(), "cpu", "float32", None)
    engine = BatchEngine(model, tok, "tiny", max_num_seqs=8, threads=1)
    # the mid-decode poison: its detokenizing raises at its 5th token, inside a batched step
    advance = engine.detok.advance

    def poisoned_advance(seq: Any) -> tuple[str, bool]:
        if seq.request.request_id == "poison-mid" and len(seq.generated) == 5:
            raise RuntimeError("injected failure of one sequence")
        return advance(seq)

    engine.detok.advance = poisoned_advance  # type: ignore[method-assign]
    got = _Collect()
    prompt = tok("hello there, how are you")["input_ids"]

    def submit(request_id: str, **extra: Any) -> None:
        engine.submit(GenerationRequest(
            request_id=request_id, prompt_ids=list(prompt),
            params=SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True),
            sink=got.sink(request_id), **extra))

    # the worker refuses such a continuation before it reaches the engine
    assert "outside the vocabulary" in str(engine.check_resume([10**9], 0))
    assert "text_sent" in str(engine.check_resume(prompt[:3], 10**12))
    assert engine.check_resume(prompt[:3], 1) is None
    engine.start()
    try:
        for i in range(4):
            submit(f"normal-{i}")
        deadline = time.monotonic() + 60
        while min(got.tokens(f"normal-{i}") for i in range(4)) < 2:
            assert time.monotonic() < deadline, "the normal streams did not start"
            time.sleep(0.005)
        # joins the running batch; its prefill raises (IndexError in the embedding)
        submit("poison-prefill", resume_ids=[10**9], resume_text_sent=0)
        submit("poison-mid")
        for request_id, event in got.done.items():
            assert event.wait(60), f"{request_id} did not finish"
        stats = engine.stats()
    finally:
        engine.stop()
    for i in range(4):
        last = got.last(f"normal-{i}")
        assert last.error is None and last.finish_reason == "length", last
        assert got.tokens(f"normal-{i}") == TOKENS
    for request_id in ("poison-prefill", "poison-mid"):
        last = got.last(request_id)
        assert last.finish_reason == "error" and last.error is not None, last
        assert "engine error in this request" in last.error, last.error
    assert got.tokens("poison-mid") == 4  # it failed at its 5th token, after 4 were sent
    # the poisoned ones shared steps with the normal ones: they were in the same batch
    assert max(int(k) for k in stats["batch_sizes"]) >= 5, stats["batch_sizes"]


def test_continuation_only_from_the_router_and_only_what_the_engine_could_make(
        tmp_path: Any) -> None:
    secret = "fleet-internal-secret"
    env = {**os.environ, "LLM_CHAOS_INTERNAL_TOKEN": secret}
    proc = start_worker("sim", args=["--max-model-len=256", "--sim-ttft=0.002",
                                     "--sim-itl=0.001"], log_dir=tmp_path, env=env)
    try:
        proc.wait_ready(timeout=60)
        body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8, "stream": True}

        def post(continuation: Any, header: str | None) -> httpx.Response:
            headers = {"x-llm-chaos-internal": header} if header is not None else {}
            return httpx.post(proc.url + "/v1/chat/completions",
                              json={**body, "continuation": continuation}, headers=headers,
                              timeout=30)

        good = {"token_ids": [0, 1, 2], "text_sent": 5}
        for header in (None, "", "wrong"):
            resp = post(good, header)
            assert resp.status_code == 400, resp.text
            assert "clients may not send it" in resp.json()["error"]["message"]
            assert resp.json()["error"]["param"] == "continuation"
        for bad, phrase in (({"token_ids": [999999999], "text_sent": 0}, "token id 999999999"),
                            ({"token_ids": [0, 1], "text_sent": 10**12}, "text_sent")):
            resp = post(bad, secret)
            assert resp.status_code == 400 and phrase in resp.json()["error"]["message"], \
                resp.text
        resp = post(good, secret)
        assert resp.status_code == 200 and resp.text.rstrip().endswith("data: [DONE]"), \
            resp.text
    finally:
        proc.stop()
