"""Liveness thresholds follow the engine's measured step time, and workers split the cores:
a slow but working engine is never declared stalled; a stuck one still is."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from targets.reference.engine import BatchEngine
from targets.reference.liveness import STALL_STEPS, StepTimes, threads_per_worker
from targets.reference.models import ensure_tiny_folder, load_model
from targets.reference.params import GenerationRequest, Output, SamplingParams

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo


def test_the_stall_limit_stretches_with_slow_steps_and_keeps_its_floor() -> None:
    times = StepTimes(floor=3.0, keep=4)
    assert times.stall_limit == 3.0  # nothing measured yet: the floor
    for s in (0.02, 0.03, 0.02):
        times.record(s)
    assert times.stall_limit == 3.0  # fast steps: the floor still rules
    times.record(0.8)  # a CPU four times slower, or a core taken by another process
    assert times.stall_limit == pytest.approx(STALL_STEPS * 0.8)
    for _ in range(4):
        times.record(0.02)  # the slow spell leaves the window: back to the floor
    assert times.stall_limit == 3.0


def test_cores_are_split_between_workers() -> None:
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(4, cores=2) == 1  # never zero
    assert threads_per_worker(0, cores=4) == 4


class _Slowed:
    """The decoder's passes with `delay` seconds added (a CPU far slower than this one), or
    blocked while `stuck` is set (an engine that stopped making progress)."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.stuck = threading.Event()
        self.release = threading.Event()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def slowed(*args: Any, **kwargs: Any) -> Any:
            if self.stuck.is_set():
                self.release.wait(30)
            time.sleep(self.delay)
            return fn(*args, **kwargs)
        return slowed


def test_a_slow_engine_is_healthy_and_a_stuck_one_is_not() -> None:
    model, tok = load_model(ensure_tiny_folder(), "cpu", "float32", None)
    floor = 0.3
    engine = BatchEngine(model, tok, "tiny", max_num_seqs=4, stall_timeout=floor, threads=1)
    slowed = _Slowed()
    engine.decoder.decode = slowed.wrap(engine.decoder.decode)  # type: ignore[method-assign]
    engine.decoder.prefill_many = slowed.wrap(  # type: ignore[method-assign]
        engine.decoder.prefill_many)
    engine.start()
    done = threading.Event()
    outputs: list[Output] = []

    def sink(out: Output) -> None:
        outputs.append(out)
        if out.finished:
            done.set()

    def generate(tokens: int) -> None:
        done.clear()
        engine.submit(GenerationRequest(
            request_id=f"r{time.monotonic()}", prompt_ids=tok("hello there")["input_ids"],
            params=SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True),
            sink=sink))

    try:
        slowed.delay = 0.15  # every step slower than half the floor
        generate(6)
        unhealthy = []
        while not done.wait(0.05):
            ok, why = engine.healthy()
            if not ok:
                unhealthy.append(why)
        assert unhealthy == []
        assert engine.stats()["step_s_max"] >= 0.15
        slowed.delay = 0.9  # now three times the floor: a fixed 0.3 s timeout would fire
        generate(3)
        while not done.wait(0.05):
            ok, why = engine.healthy()
            if not ok:
                unhealthy.append(why)
        assert unhealthy == [], "a slow but working engine was declared stalled"
        limit = engine.stats()["stall_after_s"]
        assert limit == pytest.approx(STALL_STEPS * engine.stats()["step_s_max"])
        # stuck: no step completes; the limit its earlier steps set still catches it
        slowed.delay = 0.0
        slowed.stuck.set()
        generate(3)
        deadline = time.monotonic() + limit + 5
        while engine.healthy()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        ok, why = engine.healthy()
        assert not ok and "no progress" in why
    finally:
        slowed.release.set()
        slowed.stuck.clear()
        engine.stop()
