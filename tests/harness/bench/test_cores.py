"""`llm-chaos bench cores`: three real fleets end to end on the tiny model, and its figures."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from harness.bench import cores
from harness.bench.streams import BatchTiming, StreamTiming
from tests.benching import run_bench

# The end-to-end run below asserts a benchmark's shape on the tiny model, never a timing: it
# runs beside another test (make test's second phase), started first as a long one.


@pytest.mark.long
@pytest.mark.timeout(240)
def test_three_fleets_end_to_end_on_the_tiny_model(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = run_bench(tmp_path, capsys, "cores", "--model", "tiny", "--quick", "--streams", "4",
                    "--max-tokens", "6")
    figures = run.figures
    for setup in ("one", "two", "two_all_cores"):
        assert figures[f"{setup}.itl_p95_s"] > 0
        assert figures[f"{setup}.itl_p95_s"] >= figures[f"{setup}.itl_p50_s"]
    assert figures["two_vs_one.itl_p95_ratio"] == pytest.approx(
        figures["two.itl_p95_s"] / figures["one.itl_p95_s"])
    assert "two workers share the cores" in run.out


def test_percentiles_interpolate() -> None:
    values = [float(v) for v in range(1, 101)]
    assert cores.percentile(values, 50) == pytest.approx(50.5)
    assert cores.percentile(values, 95) == pytest.approx(95.05)
    assert cores.percentile([], 95) is None
    assert cores.percentile([0.2], 95) == 0.2


def _batch(gap: float) -> BatchTiming:
    stream = StreamTiming("x", 5, 0.1, 0.1 + 4 * gap, gaps=(gap,) * 4)
    return BatchTiming((stream, stream), 0.1 + 4 * gap)


def test_the_goal_compares_two_workers_with_one() -> None:
    args = argparse.Namespace(streams=2, max_tokens=5, model="m", worker_arg=[])
    setups = [cores._Setup("one", "one", 1, 0), cores._Setup("two", "two", 2, 0),
              cores._Setup("two_all_cores", "all", 2, 2)]
    met = {}
    for two_gap in (0.15, 0.25):
        runs = {"one": [_batch(0.1)], "two": [_batch(two_gap)], "two_all_cores": [_batch(1.0)]}
        result = cores._result(args, 1, 2, setups, runs)
        met[two_gap] = result.goal_rows()[0]["met"]
        assert result.value("two_all_cores_vs_one.itl_p95_ratio") == pytest.approx(10.0)
    assert met == {0.15: True, 0.25: False}


def test_a_failed_contrast_setup_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers each taking every core can be slow enough for the router's deadline (a
    2-core AVX2-only EPYC: 502 deadline exceeded): that setup is reported as not measured and
    the goal, which compares the split with one worker, still stands; a failure in the goal's
    own setups still ends the run."""
    from harness.errors import TargetError

    args = argparse.Namespace(streams=2, max_tokens=5, model="m", worker_arg=[], rounds=1,
                              quick=True)
    seen: list[str] = []

    def run_setup(args: argparse.Namespace, setup: cores._Setup, *_: object) -> list[BatchTiming]:
        if setup.name == fail:
            raise TargetError("stream ended with an error frame: deadline exceeded")
        return [_batch(0.1)]

    monkeypatch.setattr(cores, "_run_setup", run_setup)
    fail = "two_all_cores"
    result = cores.measure(args, seen.append)
    assert result.value("two_all_cores.itl_p95_s") is None
    assert result.goal_rows()[0]["met"] is True
    assert any("not measured" in line and "deadline exceeded" in line for line in seen)
    assert any("deadline exceeded" in note for note in result.notes)
    fail = "two"
    with pytest.raises(TargetError, match="deadline exceeded"):
        cores.measure(args, seen.append)
