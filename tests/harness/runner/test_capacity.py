"""`load.users: auto`: the sizing rule gives the same users on a machine 3x slower when the
target is token-rate bound, the measurement reads what the target streams (a fake target
here; `test_run.py` runs it against the reference target) and fails the run clearly when the
target cannot answer."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.errors import TargetError
from harness.experiment import LoadConfig, parse_experiment
from harness.loadgen.client import Outcome, Request
from harness.runner.capacity import (
    CAPACITY_FILE,
    measure_capacity,
    scenario_max_tokens,
    size_users,
)

ROOT = Path(__file__).resolve().parents[3]


def auto_load(**fields: Any) -> LoadConfig:
    extra = "".join(f", {k}: {v}" for k, v in fields.items())
    return parse_experiment(f"target: {{}}\nload: {{duration: 10, users: auto{extra}}}\n").load


# -- the rule ----------------------------------------------------------------------------------

def test_a_target_3x_slower_in_both_figures_gets_the_same_users() -> None:
    # token-rate bound: 3x slower means each stream takes 3x longer and C is a third
    fast = size_users(e2e_1=0.4, tokens=32, tokens_per_s=1200.0, utilization=0.5, max_users=64)
    slow = size_users(e2e_1=1.2, tokens=32, tokens_per_s=400.0, utilization=0.5, max_users=64)
    assert fast == slow == 8  # 0.5 * 1200 * 0.4 / 32 = 7.5 -> 8


def test_users_follow_capacity_and_utilization() -> None:
    # the same single stream, a third of the capacity (fewer batch slots): a third of the users
    assert size_users(0.4, 32, 2400.0, 0.5, 64) == 15
    assert size_users(0.4, 32, 800.0, 0.5, 64) == 5
    assert size_users(0.4, 32, 2400.0, 1.0, 64) == 30
    # longer answers per request take longer per user: the rule counts tokens, not requests
    assert size_users(0.8, 64, 2400.0, 0.5, 64) == 15


def test_users_are_clamped_to_one_and_max_users() -> None:
    assert size_users(0.01, 32, 10.0, 0.1, 64) == 1
    assert size_users(2.0, 32, 100000.0, 1.0, 64) == 64
    assert size_users(2.0, 32, 100000.0, 1.0, 12) == 12
    with pytest.raises(ValueError, match="no capacity"):
        size_users(0.4, 0, 100.0, 0.5, 64)


# -- the measurement against a fake target ------------------------------------------------------

class FakeTarget:
    """Streams of `tokens` tokens; alone a stream takes `e2e` s, a round of concurrent ones
    ends after `e2e * round_factor` s (the batch is slower than one stream), all `slowdown`x."""

    def __init__(self, e2e: float = 0.4, tokens: int = 32, round_factor: float = 2.0,
                 slowdown: float = 1.0, fail: str | None = None,
                 hang: threading.Event | None = None) -> None:
        self.e2e, self.tokens, self.round_factor = e2e * slowdown, tokens, round_factor
        self.fail, self.hang = fail, hang
        self.sent: list[Request] = []
        self._lock = threading.Lock()
        self._count = itertools.count()

    def __call__(self, url: str, timeout: float) -> FakeTarget:
        return self

    def get_json(self, path: str) -> Any:
        assert path == "/v1/models"
        return {"data": [{"id": "fake-model"}]}

    def send(self, req: Request) -> Outcome:
        with self._lock:
            self.sent.append(req)
            n = next(self._count)
        if self.hang is not None:
            self.hang.wait(10)
        out = Outcome(req.request_id, sent_mono=100.0)
        alone = n < 2  # the first two are the single streams
        out.end_mono = 100.0 + self.e2e * (1.0 if alone else self.round_factor)
        out.usage_completion = self.tokens
        out.content_times = [out.end_mono] * self.tokens
        if self.fail is not None and not alone:
            out.fail(self.fail, "HTTP 500")
        return out

    def close(self) -> None:
        pass


def test_measurement_sizes_the_same_load_on_a_3x_slower_target(tmp_path: Path) -> None:
    figures = []
    for slowdown in (1.0, 3.0):
        target = FakeTarget(slowdown=slowdown)
        cap = measure_capacity("http://127.0.0.1:1", auto_load(), client=target)
        # 16 streams of 32 tokens in 0.8 s x slowdown; one alone in 0.4 s x slowdown
        assert cap.tokens_per_s == pytest.approx(640.0 / slowdown)
        assert cap.e2e_1 == pytest.approx(0.4 * slowdown)
        assert len(target.sent) == 2 + 16
        body = target.sent[0].body
        assert body["model"] == "fake-model" and body["stream"] is True
        assert body["max_tokens"] == 32  # scenarios/chat_qa.py, the default locustfile
        figures.append(cap)
    assert figures[0].users == figures[1].users == 4  # 0.5 * 640 * 0.4 / 32
    assert figures[0].line() == ("capacity: 1 stream e2e 0.40 s (32 tokens), 16 streams "
                                 "640 tokens/s -> 4 users (utilization 0.5)")
    path = figures[0].write(tmp_path)
    assert path.name == CAPACITY_FILE
    saved = json.loads(path.read_text())
    assert saved["requested"] == "auto" and saved["users"] == 4 and "rule" in saved
    assert saved["single_e2e"] == [pytest.approx(0.4)] * 2 and saved["streams_tokens"] == 512


def test_measurement_uses_the_loads_max_tokens_and_says_when_capped() -> None:
    target = FakeTarget(tokens=8, round_factor=1.0)
    cap = measure_capacity("http://127.0.0.1:1", auto_load(max_tokens=8, max_users=5,
                                                           utilization=1.0), client=target)
    assert target.sent[0].body["max_tokens"] == 8 and cap.max_tokens_source == "load.max_tokens"
    assert cap.unclamped == pytest.approx(16.0) and cap.users == 5
    assert "-> 5 users (utilization 1, capped at max_users 5)" in cap.line()


def test_a_failing_stream_or_model_list_fails_the_run_clearly() -> None:
    with pytest.raises(TargetError, match=r"a stream failed \(http_error"):
        measure_capacity("http://127.0.0.1:1", auto_load(), client=FakeTarget(fail="http_error"))

    class NoModels(FakeTarget):
        def get_json(self, path: str) -> Any:
            raise OSError("connection refused")

    with pytest.raises(TargetError, match=r"GET http://127\.0\.0\.1:1/v1/models failed"):
        measure_capacity("http://127.0.0.1:1", auto_load(), client=NoModels())


def test_a_target_that_does_not_answer_is_bounded_in_time() -> None:
    hang = threading.Event()
    try:
        with pytest.raises(TargetError, match=r"not answered within 0\.2 s"):
            measure_capacity("http://127.0.0.1:1", auto_load(request_timeout=0.2),
                             client=FakeTarget(hang=hang))
    finally:
        hang.set()


def test_streams_rejected_with_429_count_as_less_capacity() -> None:
    class HalfFull(FakeTarget):
        def send(self, req: Request) -> Outcome:
            out = FakeTarget.send(self, req)
            if len(self.sent) > 2 and len(self.sent) % 2:
                out.fail("rate_limited", "HTTP 429")
            return out

    cap = measure_capacity("http://127.0.0.1:1", auto_load(), client=HalfFull())
    assert (cap.streams_completed, cap.streams_rejected) == (8, 8)
    assert cap.tokens_per_s == pytest.approx(320.0) and cap.users == 2
    with pytest.raises(TargetError, match="all 16 concurrent streams were rejected"):
        measure_capacity("http://127.0.0.1:1", auto_load(),
                         client=FakeTarget(fail="rate_limited"))


def test_scenario_max_tokens_is_read_without_importing_locust() -> None:
    chat = str(ROOT / "scenarios" / "chat_qa.py")
    shape = str(ROOT / "scenarios" / "load_shape.py")
    assert scenario_max_tokens([chat, shape]) == (32, chat)
    tokens, why = scenario_max_tokens([chat, str(ROOT / "scenarios" / "long_generation.py")])
    assert tokens is None and "differ (32, 512)" in why
    assert scenario_max_tokens([shape]) == (None, "no scenario sets it")
