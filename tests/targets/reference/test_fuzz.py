"""Fuzzing the worker's API: every invalid request gets a 4xx with OpenAI's error JSON.

Bodies come from `harness.strategies.bad_requests` (invalid by construction, so a 200 is a real
failure). After each one the worker must still be healthy, and after the run it must still
answer a normal request. Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from harness.launcher import ServerProcess
from harness.strategies import COMPLETION_PATH, BadRequest, bad_requests
from targets.reference.models import ensure_tiny_folder

# No explain phase: it reruns failing cases under a tracer to list lines, which says nothing
# about a server in another process and takes minutes.
_SETTINGS = settings(deadline=None, derandomize=True, database=None,
                     phases=[Phase.explicit, Phase.generate, Phase.shrink],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_JSON = {"Content-Type": "application/json"}


def _max_model_len(client: httpx.Client, url: str) -> int:
    return int(client.get(url + "/v1/models").json()["data"][0]["max_model_len"])


def assert_openai_error(resp: httpx.Response, fields: frozenset[str], why: str) -> dict[str, Any]:
    """A 4xx whose body is exactly {"error": {message, type, param, code}}; returns the error."""
    assert 400 <= resp.status_code < 500, f"{why}: got {resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"{why}: {body}"
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"{why}: {error}"
    assert isinstance(error["message"], str) and error["message"], why
    assert isinstance(error["type"], str) and error["type"], why
    assert error["param"] is None or isinstance(error["param"], str), why
    assert error["code"] is None or isinstance(error["code"], (str, int)), why
    # The worker names the field at fault: the top of `param`'s path is one that was broken.
    # A whole-body problem (not JSON, not an object, over the size limit) names none.
    if not fields or resp.status_code == 413:
        assert error["param"] is None, f"{why}: {error}"
    else:
        assert error["param"] is not None, f"{why}: {error}"
        assert error["param"].split(".")[0] in fields, f"{why}: {error}"
    return error


def send(client: httpx.Client, url: str, bad: BadRequest) -> None:
    """Send one bad request and check the answer and the worker's health after it."""
    resp = client.post(url + bad.path, content=bad.content, headers=_JSON)
    assert_openai_error(resp, bad.fields, repr(bad))
    assert client.get(url + "/health").status_code == 200, f"unhealthy after {bad!r}"


def assert_still_serves(client: httpx.Client, url: str, model: str) -> None:
    chat = client.post(url + "/v1/chat/completions", json={
        "model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hello"}]})
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["completion_tokens"] >= 1
    done = client.post(url + COMPLETION_PATH, json={"model": model, "prompt": "hi",
                                                     "max_tokens": 2, "stream": True})
    assert done.status_code == 200 and done.text.rstrip().endswith("data: [DONE]"), done.text
    assert client.get(url + "/health").status_code == 200


def _fuzz(worker: ServerProcess, model: str, examples: int, timeout: float) -> int:
    """`examples` bad requests drawn by Hypothesis, each refused; then the worker still serves.
    How many were sent."""
    sent = 0
    with httpx.Client(timeout=timeout) as client:
        limit = _max_model_len(client, worker.url)

        @settings(_SETTINGS, max_examples=examples)
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            nonlocal sent
            send(client, worker.url, data.draw(bad_requests(model, limit), label="request"))
            sent += 1

        fuzz()
        assert_still_serves(client, worker.url, model)
    return sent


def test_sim_worker_refuses_every_bad_request(sim_worker: ServerProcess) -> None:
    assert _fuzz(sim_worker, "sim", examples=150, timeout=20) > 0


def test_tiny_worker_refuses_bad_requests(tiny_worker: ServerProcess) -> None:
    # a few of the same cases against a real model: chat templates and a real tokenizer
    assert _fuzz(tiny_worker, "tiny", examples=15, timeout=30) > 0


@pytest.fixture(scope="module")
def tiny_tokenizer() -> Tokenizer:
    """The tiny model's own tokenizer, to count a prompt's tokens as the worker does."""
    return Tokenizer.from_file(str(ensure_tiny_folder() / "tokenizer.json"))


def test_context_limit_is_judged_by_real_tokens(tiny_worker: ServerProcess,
                                                tiny_tokenizer: Tokenizer) -> None:
    # Prompts decoded from random token ids: their length in characters or words says little
    # about their length in tokens, so only the tokenizer can tell whether they fit.
    with httpx.Client(timeout=30) as client:
        limit = _max_model_len(client, tiny_worker.url)
        vocab = tiny_tokenizer.get_vocab_size()

        @settings(_SETTINGS, max_examples=12)
        @given(count=st.integers(limit // 2, limit + limit // 4), rng=st.randoms(),
               extra=st.integers(1, 10**6))
        def fuzz(count: int, rng: random.Random, extra: int) -> None:
            # Ids from 17 up skip the special tokens (<|im_start|> and friends).
            text = tiny_tokenizer.decode([rng.randrange(17, vocab) for _ in range(count)])
            tokens = len(tiny_tokenizer.encode(text).ids)
            body: dict[str, Any] = {"model": "tiny", "prompt": text}
            if tokens < limit:
                body["max_tokens"] = limit - tokens + extra
            field = "max_tokens" if tokens < limit else "prompt"
            resp = client.post(tiny_worker.url + COMPLETION_PATH, json=body)
            why = f"{tokens} prompt tokens, max_tokens {body.get('max_tokens')}"
            assert_openai_error(resp, frozenset({field}), why)

        fuzz()


def test_prompt_that_just_fits_is_served(tiny_worker: ServerProcess,
                                         tiny_tokenizer: Tokenizer) -> None:
    # The other side of the boundary: the worker counts exactly the tokens we count.
    with httpx.Client(timeout=60) as client:
        limit = _max_model_len(client, tiny_worker.url)
        prompt = "the" + " the" * (limit - 3)
        tokens = len(tiny_tokenizer.encode(prompt).ids)
        assert tokens == limit - 2
        fits = client.post(tiny_worker.url + COMPLETION_PATH,
                           json={"model": "tiny", "prompt": prompt, "max_tokens": 2})
        assert fits.status_code == 200, fits.text
        assert fits.json()["usage"]["prompt_tokens"] == tokens
        over = client.post(tiny_worker.url + COMPLETION_PATH,
                           json={"model": "tiny", "prompt": prompt, "max_tokens": 3})
        assert_openai_error(over, frozenset({"max_tokens"}), "one token over the context")
