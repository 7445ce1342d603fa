"""Seeded prompts of measured token lengths, load shapes and arrival schedules (pure)."""

from __future__ import annotations

import random
import statistics

import pytest

from harness.errors import UsageError
from harness.loadgen.arrivals import parse_arrival
from harness.loadgen.prompt_set import LICENSE, PROMPTS
from harness.loadgen.prompts import (
    BundledPrompts,
    Conversation,
    LengthDistribution,
    SharedPrefixPrompts,
    SyntheticPrompts,
)
from harness.loadgen.shapes import ShapeSpec
from harness.loadgen.tokens import default_tokenizer_dir, load_tokenizer


@pytest.mark.parametrize("spec", ["fixed:37", "uniform:10,200", "normal:100,30",
                                  "lognormal:64,0.7"])
def test_synthetic_prompts_have_exact_token_lengths(spec: str) -> None:
    tok = load_tokenizer(str(default_tokenizer_dir()))
    assert tok is not None
    source = SyntheticPrompts(LengthDistribution.parse(spec), tok)
    rng = random.Random(5)
    prompts = [source.next(rng) for _ in range(30)]
    for p in prompts:
        assert tok.count(p.messages[-1]["content"]) == p.tokens
    if spec.startswith("fixed"):
        assert {p.tokens for p in prompts} == {37}
    else:
        assert len({p.tokens for p in prompts}) > 5


def test_distributions_are_seeded_and_shaped() -> None:
    uniform = LengthDistribution.parse("uniform:1,100")
    assert [uniform.draw(random.Random(1)) for _ in range(5)] == [
        uniform.draw(random.Random(1)) for _ in range(5)]
    rng = random.Random(0)
    normal = [LengthDistribution.parse("normal:200,20").draw(rng) for _ in range(2000)]
    assert 195 < statistics.mean(normal) < 205
    logn = [LengthDistribution.parse("lognormal:100,0.5").draw(rng) for _ in range(2000)]
    assert 90 < statistics.median(logn) < 110 and max(logn) > 250
    with pytest.raises(UsageError, match="lognormal:MEDIAN,SIGMA"):
        LengthDistribution.parse("gamma:1,2")


def test_same_seed_same_prompts() -> None:
    source = SyntheticPrompts(LengthDistribution.parse("uniform:5,50"), None)
    a = [source.next(random.Random(9)).messages for _ in range(3)]
    b = [source.next(random.Random(9)).messages for _ in range(3)]
    assert a == b


def test_bundled_prompts_are_licensed_and_used() -> None:
    assert "CC0" in LICENSE and len(PROMPTS) >= 20
    p = BundledPrompts().next(random.Random(1))
    assert p.messages[0]["content"] in PROMPTS


def test_shared_prefix_and_conversation() -> None:
    shared = SharedPrefixPrompts(64, BundledPrompts(), None, seed=1)
    a, b = shared.next(random.Random(1)), shared.next(random.Random(2))
    assert a.messages[0] == b.messages[0] and a.messages[0]["role"] == "system"
    conv = Conversation(BundledPrompts(), max_turns=2)
    rng = random.Random(3)
    first = conv.next(rng)
    conv.answered("answer one")
    second = conv.next(rng)
    assert len(first.messages) == 1 and len(second.messages) == 3
    assert second.messages[1] == {"role": "assistant", "content": "answer one"}
    conv.retract()  # the second question failed: forgotten, so roles keep alternating
    assert [m["role"] for m in conv.history] == ["user", "assistant"]


def test_shapes() -> None:
    steady = ShapeSpec("steady", users=8, spawn_rate=4, run_time=10).validate()
    assert steady.tick(0) == (8, 4) and steady.tick(10) is None
    ramp = ShapeSpec("ramp", users=10, ramp_time=10).validate()
    assert [ramp.tick(t)[0] for t in (0, 5, 10, 100)] == [1, 5, 10, 10]  # type: ignore[index]
    step = ShapeSpec("step", users=6, step_users=2, step_time=5).validate()
    assert [step.tick(t)[0] for t in (0, 5, 10, 50)] == [2, 4, 6, 6]  # type: ignore[index]
    spike = ShapeSpec("spike", users=2, spike_users=20, spike_at=5, spike_duration=3).validate()
    assert [spike.tick(t)[0] for t in (0, 5, 7.9, 8)] == [2, 20, 20, 2]  # type: ignore[index]
    soak = ShapeSpec("soak", users=4, run_time=600).validate()
    assert soak.tick(1)[0] == 1 and soak.tick(60)[0] == 4  # type: ignore[index]
    with pytest.raises(UsageError, match="soak needs --run-time"):
        ShapeSpec("soak", users=4).validate()
    with pytest.raises(UsageError, match="choose one of"):
        ShapeSpec("wave").validate()


def test_arrivals() -> None:
    assert parse_arrival("closed", None, random.Random(0)) is None
    const = parse_arrival("constant", 4.0, random.Random(0))
    assert const is not None
    assert [const.next_due(10.0) for _ in range(3)] == [10.0, 10.25, 10.5]
    poisson = parse_arrival("poisson", 100.0, random.Random(0))
    assert poisson is not None
    due = [poisson.next_due(0.0) for _ in range(5001)]
    assert 45 < due[-1] < 55  # 5000 gaps of mean 10 ms
    again = parse_arrival("poisson", 100.0, random.Random(0))
    assert again is not None and [again.next_due(0.0) for _ in range(5)] == due[:5]
    with pytest.raises(UsageError, match="needs --rate"):
        parse_arrival("poisson", None, random.Random(0))
