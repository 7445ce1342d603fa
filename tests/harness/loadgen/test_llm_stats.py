"""The LLM table from history lines: what is counted, percentiles, batches merged."""

from __future__ import annotations

import random
from typing import Any

import pytest

from harness.loadgen.llm_stats import COLUMNS, Histogram, LLMStats


def _line(scenario: str, status: str, sent: float, ttft: float | None,
          itl: list[float], tokens: int) -> dict[str, Any]:
    e2e = (ttft or 0.0) + sum(itl)
    tpot = (e2e - ttft) / (tokens - 1) if ttft is not None and tokens > 1 else None
    return {"type": "ok", "time": sent + e2e, "value": {
        "scenario": scenario, "status": status, "sent_at": sent, "ttft": ttft, "itl": itl,
        "tpot": tpot, "output_tokens": tokens}}


def test_histogram_percentiles_within_one_percent() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(-4, 1) for _ in range(5000))
    h = Histogram()
    for v in values:
        h.add(v)
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert h.percentile(q) == pytest.approx(exact, rel=0.011)
    assert Histogram().percentile(0.5) is None


def test_rows_count_what_locust_counts_and_batches_merge() -> None:
    lines = [_line("chat_qa", "ok", 100.0, 0.05, [0.01] * 7, 8),
             _line("chat_qa", "http_error", 100.5, None, [], 0),
             _line("multi_turn", "ok", 101.0, 0.06, [0.02] * 3, 4),
             # cut short when Locust stopped its users: no request event, not counted
             _line("multi_turn", "interrupted", 101.5, 0.05, [0.01], 2)]
    whole = LLMStats.of(lines)
    merged = LLMStats.of(lines[:2])
    merged.merge(LLMStats.of(lines[2:]))
    assert whole.table() == merged.table()
    table = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in whole.table()}
    assert list(table) == ["chat_qa", "multi_turn", "Aggregated"]
    total = table["Aggregated"]
    assert (total["Request Count"], total["Failure Count"], total["Output Tokens"]) == (
        "3", "1", "12")
    assert float(total["ITL 50% (ms)"]) == pytest.approx(10.0, rel=0.01)
    assert float(table["multi_turn"]["TTFT 50% (ms)"]) == pytest.approx(60.0, rel=0.01)
    assert float(table["chat_qa"]["TPOT 50% (ms)"]) == pytest.approx(10.0, rel=0.01)
    # tokens over the time from the first request sent to the last one ended (100 .. 101.12)
    assert float(total["Output Tokens/s"]) == pytest.approx(12 / 1.12, rel=0.01)
    assert table["chat_qa"][COLUMNS[3]] != "" and "Aggregated" in whole.console_lines()[-1]
