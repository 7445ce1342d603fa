"""The simulated engine keeps its schedule: the ground truth the harness is measured against."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
import uuid

import httpx
import pytest

from harness.launcher import ServerProcess
from targets.reference.params import GenerationRequest, Output, SamplingParams
from targets.reference.sim import WORDS, Delay, SimEngine


def test_delay_specs_parse_and_draw_seeded() -> None:
    assert Delay.parse("0.05").draw(random.Random(1)) == 0.05
    uni = Delay.parse("uniform:0.01,0.02")
    draws = [uni.draw(random.Random(7)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2] and 0.01 <= draws[0] <= 0.02
    assert Delay.parse("exp:0.01").kind == "exp"
    with pytest.raises(ValueError, match="uniform:LO,HI"):
        Delay.parse("gamma:1")


def test_words_are_single_smollm2_tokens() -> None:
    from transformers import AutoTokenizer

    from targets.reference.models import ensure_smollm2_folder

    tok = AutoTokenizer.from_pretrained(str(ensure_smollm2_folder()))
    for word in WORDS:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    text = "".join(WORDS[i % len(WORDS)] for i in range(0, 200, 7))
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == len(range(0, 200, 7))


async def _stream(client: httpx.AsyncClient, url: str, rid: str, tokens: int) -> int:
    body = {"model": "sim", "max_tokens": tokens, "stream": True,
            "messages": [{"role": "user", "content": f"request {rid}"}]}
    count = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers={"X-Request-Id": rid}) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and '"content":" ' in line:
                count += 1
    return count


def _emission_errors(url: str) -> list[float]:
    """Run 64 concurrent 40-token streams; each token's emission minus its schedule (s)."""
    ids = [str(uuid.uuid4()) for _ in range(64)]

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(_stream(client, url, rid, 40) for rid in ids))

    counts = asyncio.run(run())
    assert counts == [40] * 64
    errors: list[float] = []
    for rid in ids:
        trace = httpx.get(f"{url}/debug/sim/trace/{rid}", timeout=10).json()
        assert trace["tokens"] == 40
        assert abs(trace["scheduled"][0] - trace["received_at"] - 0.05) < 1e-9
        errors += [e - s for e, s in zip(trace["emitted"], trace["scheduled"], strict=True)]
    assert min(errors) >= 0.0  # never early
    return sorted(errors)


@pytest.mark.solo  # a timing at 1 ms
def test_64_streams_emit_on_schedule(timed_sim: tuple[ServerProcess, list[str]]) -> None:
    """Tokens of 64 concurrent streams are emitted within 1 ms of their schedule (p99).

    The test client shares the 2 cores with the worker: the worker runs at real-time priority
    where the kernel allows it (as the truth tests' engine does), or the tail would measure
    how long the OS leaves a woken scheduler thread waiting for a core behind the client
    (p99 1.1-2.3 ms in three runs on a 2-core EPYC, 0.6-0.9 ms on the same machine quieter).
    The OS may still preempt it now and then, which no user-space scheduler can prevent: a
    run whose tail was disturbed that way is run again (3 runs at most), and the median must
    hold in every run.
    """
    sim, _ = timed_sim
    runs: list[tuple[float, float, float]] = []
    for _ in range(3):
        errors = _emission_errors(sim.url)
        p99 = errors[int(0.99 * (len(errors) - 1))]
        runs.append((statistics.median(errors), p99, errors[-1]))
        print(f"emission error over {len(errors)} tokens: median {runs[-1][0] * 1e3:.3f} ms, "
              f"p99 {p99 * 1e3:.3f} ms, max {errors[-1] * 1e3:.3f} ms")
        assert runs[-1][0] <= 0.0005, runs
        if p99 <= 0.001 and errors[-1] <= 0.005:
            break
    best = min(runs, key=lambda r: r[1])
    assert best[1] <= 0.001, f"p99 over 1 ms in every run (median, p99, max): {runs}"
    assert best[2] <= 0.005, runs


def test_a_stream_without_delays_flows_token_by_token() -> None:
    """With no time to first token and no inter-token delay every token is due at once; the
    engine still hands them over one round at a time, one token per stream, like decode
    steps: the first token is handed over before the last is stamped, not after the whole
    stream was."""
    engine = SimEngine(ttft=0, itl=0)
    handed: list[tuple[float, Output]] = []
    done = threading.Event()

    def sink(output: Output) -> None:
        handed.append((time.monotonic(), output))
        if output.finished:
            done.set()

    engine.start()
    try:
        engine.submit(GenerationRequest("r", [0], SamplingParams(max_tokens=5000), sink,
                                        prompt_text="x", received_at=time.monotonic()))
        assert done.wait(30)
    finally:
        engine.stop()
    assert len(handed) == 5000 and [o.completion_tokens for _, o in handed[:3]] == [1, 2, 3]
    first_handed, last_stamped = handed[0][0], handed[-1][1].emitted_at
    assert first_handed < last_stamped
