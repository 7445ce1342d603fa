"""`llm-chaos bench`: the framework end to end against the tiny model, and its exit rules.

The goals themselves (16 streams >= 6x one stream, ...) are judged by a real SmolLM2 run, not
here: on the tiny model the numbers mean nothing, only their presence and shape do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.bench import BenchResult, Figure, Goal, Table
from harness.bench.result import render_table
from harness.bench.runner import exit_status
from harness.cli import main

LEVELS = (1, 2, 4)


def _expected_figures(levels: tuple[int, ...]) -> set[str]:
    top = levels[-1]
    per_level = ("output_tokens_per_s", "ttft_median_s", "wall_s")
    names = {f"ours.streams_{c}.{k}" for c in levels for k in per_level}
    names |= {f"int8.streams_{top}.{k}" for k in per_level}
    names |= {f"{mode}.{k}" for mode in ("generate_batch_default", "generate_batch",
                                         "static_generate")
              for k in ("output_tokens_per_s", "wall_s")}
    names |= {"ours.scaling", "ours.vs_generate_batch", "ours.vs_generate_batch_sized",
              "ours.vs_static_generate",
              "ours.identical_to_static_generate", "cold_start.median_s", "cold_start.best_s",
              "int8.ready_s", "int8.speedup_vs_fp32", "int8.identical_outputs",
              "int8.matching_tokens"}
    return names


@pytest.mark.timeout(180)
def test_bench_engine_tiny_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", "engine", "--model", "tiny", "--quick", "--streams",
                 ",".join(map(str, LEVELS)), "--max-tokens", "8", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err

    data = json.loads(out.read_text())
    figures = {f["name"]: f for f in data["figures"]}
    assert set(figures) == _expected_figures(LEVELS)
    missing = [name for name, f in figures.items() if f["value"] is None]
    assert not missing, f"not measured: {missing}"
    assert {g["name"] for g in data["goals"]} == {"scaling", "vs_generate_batch", "cold_start"}
    for goal in data["goals"]:
        assert isinstance(goal["met"], bool)
        assert goal["measured"] is True
        assert goal["figure"] in figures and goal["expression"].startswith(goal["figure"])
    assert data["all_goals_met"] == all(g["met"] for g in data["goals"])
    assert data["config"]["streams"] == list(LEVELS)
    assert set(data["details"]["fp32"]["rounds"]) == {str(c) for c in LEVELS}

    # the printed throughput table has one fp32 row per concurrency level, and the baselines
    rows = [line.split() for line in captured.out.splitlines()]
    fp32_levels = [int(r[3]) for r in rows if r[:3] == ["reference", "worker", "fp32"]]
    assert fp32_levels == list(LEVELS)
    assert "transformers generate_batch" in captured.out
    assert "goals" in captured.out and "vs_generate_batch" in captured.out
    assert "[bench engine" in captured.err  # progress goes to stderr


def _result(value: float | None) -> BenchResult:
    return BenchResult("demo", {}, (Figure("speed", value, "x", "how fast"),),
                       (Goal("fast", "speed", ">=", 2, "speed at least 2"),), ())


@pytest.mark.parametrize(("value", "check", "status", "met"), [
    (3.0, False, 0, True), (1.0, False, 0, False), (3.0, True, 0, True),
    (1.0, True, 1, False), (None, True, 3, False), (None, False, 0, False),
])
def test_exit_status_reports_goals_and_fails_only_with_check(
        value: float | None, check: bool, status: int, met: bool) -> None:
    result = _result(value)
    assert exit_status(result, check) == status
    (row,) = result.to_json()["goals"]
    assert row["met"] is met and row["measured"] is (value is not None)
    assert row["expression"] == "speed >= 2"


def test_goal_on_an_unknown_figure_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown figure"):
        BenchResult("demo", {}, (), (Goal("fast", "speed", ">=", 2, ""),), ())


def test_table_aligns_numbers_and_marks_missing_values() -> None:
    text = render_table(Table("t", ("name", "tok/s"), (("a", 1234.5), ("bb", None), ("c", 3.0))))
    lines = text.splitlines()
    assert lines[0] == "t"
    assert lines[3].endswith(" 1234") and lines[4].endswith("-") and lines[5].endswith("3")
