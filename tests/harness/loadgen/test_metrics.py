"""Metric definitions of DESIGN.md on hand-made outcomes (exact arithmetic, no network)."""

from __future__ import annotations

import pytest

from harness.loadgen.client import Outcome, extract_text
from harness.loadgen.metrics import summarize
from harness.loadgen.records import PendingRecord
from harness.loadgen.tokens import WhitespaceCounter
from harness.runner.rundir import STATUSES, RequestRecord, jepsen_type


def outcome(**kw: object) -> Outcome:
    out = Outcome("r1", sent_mono=100.0, end_mono=100.5)
    for key, value in kw.items():
        setattr(out, key, value)
    return out


def test_ttft_itl_tpot_e2e() -> None:
    out = outcome(content_times=[100.1, 100.2, 100.25, 100.45], pieces=[" a", " b", " c", " d"],
                  usage_completion=4)
    m = summarize(out, WhitespaceCounter().count)
    assert m.ttft == pytest.approx(0.1)
    assert m.itl == pytest.approx((0.1, 0.05, 0.2))
    assert m.e2e == pytest.approx(0.5)
    assert m.tpot == pytest.approx((0.5 - 0.1) / 3)
    assert (m.output_tokens, m.output_tokens_source) == (4, "usage")
    assert m.output_tokens_tokenizer == 4 and m.token_count_difference == 0


def test_tokenizer_count_when_the_server_gives_no_usage() -> None:
    out = outcome(content_times=[100.1, 100.3], pieces=[" a b", " c"])
    m = summarize(out, WhitespaceCounter().count)
    assert (m.output_tokens, m.output_tokens_source) == (3, "tokenizer")
    assert m.output_tokens_usage is None and m.token_count_difference is None
    assert m.tpot == pytest.approx((0.5 - 0.1) / 2)


def test_usage_and_tokenizer_disagreeing_keeps_both() -> None:
    m = summarize(outcome(content_times=[100.1], pieces=[" a b"], usage_completion=5),
                  WhitespaceCounter().count)
    assert (m.output_tokens_usage, m.output_tokens_tokenizer) == (5, 2)
    assert m.token_count_difference == 3


def test_no_content_means_no_ttft() -> None:
    m = summarize(outcome(), None)
    assert m.ttft is None and m.itl == () and m.tpot is None and m.output_tokens is None


def test_content_bearing_chunks() -> None:
    assert extract_text({"delta": {"role": "assistant", "content": ""}}) == ""
    assert extract_text({"delta": {}}) == ""
    assert extract_text({"delta": {"content": " hi"}}) == " hi"
    assert extract_text({"delta": {"reasoning_content": "hmm"}}) == "hmm"
    assert extract_text({"delta": {"tool_calls": [{"function": {"arguments": "{"}}]}}) == "{"
    assert extract_text({"text": " done"}) == " done"


def test_history_line_has_the_design_keys() -> None:
    out = outcome(content_times=[100.1], pieces=[" a"], usage_completion=1, usage_prompt=7,
                  http_status=200, finish_reason="stop", done_seen=True)
    line = PendingRecord(out, "s", "chat", "local:1", "baseline", 99.0, 6, 1000.0,
                         max_tokens=64).to_line(None)
    assert line["type"] == "ok" and line["f"] == "chat" and line["process"] == "local:1"
    assert line["time"] == pytest.approx(1100.5)
    value = line["value"]
    for key in ("request_id", "scenario", "phase", "scheduled_at", "sent_at", "ttft", "itl",
                "tpot", "e2e", "prompt_tokens", "output_tokens", "output_tokens_usage",
                "output_tokens_tokenizer", "status", "error", "http_status", "text_sha256",
                "max_tokens"):
        assert key in value
    assert value["max_tokens"] == 64
    assert value["scheduled_at"] == pytest.approx(1099.0)
    assert value["sent_at"] == pytest.approx(1100.0)
    assert value["prompt_tokens"] == 7 and value["prompt_tokens_client"] == 6
    assert [jepsen_type(s) for s in ("ok", "truncated", "timeout", "interrupted")] == [
        "ok", "fail", "info", "info"]


def test_the_checks_read_back_every_field_the_loadgen_writes() -> None:
    """One schema: the line the loadgen writes is the record the checks read, field for field
    (the run directory's RequestRecord both ways)."""
    out = outcome(content_times=[100.1, 100.2, 100.4], pieces=[" a", " b", " c"],
                  usage_completion=3, usage_prompt=7, http_status=200, finish_reason="length",
                  done_seen=True, retry_after=1.5, events=5, bytes_received=321)
    line = PendingRecord(out, "s", "chat", "local:1", "steady", 99.0, 6, 1000.0,
                         max_tokens=3).to_line(WhitespaceCounter())
    back = RequestRecord.from_line(line)
    assert back is not None and back.to_line() == line
    assert back.max_tokens == 3 and back.itl == pytest.approx((0.1, 0.2))
    assert back.phase == "steady" and back.retry_after == 1.5 and back.bytes == 321
    # a field of the wrong type reads as unknown, not as a crash; no start: not a request
    broken = {**line, "value": {**line["value"], "ttft": "soon", "itl": "x"}}
    read = RequestRecord.from_line(broken)
    assert read is not None and read.ttft is None and read.itl == ()
    assert RequestRecord.from_line({**line, "value": {"request_id": "r"}}) is None


def test_every_status_the_client_sets_is_in_the_vocabulary() -> None:
    import ast
    from pathlib import Path

    import harness.loadgen

    set_here = set()
    for source in Path(harness.loadgen.__file__).parent.glob("*.py"):  # read, not imported
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "fail" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                set_here.add(node.args[0].value)
    assert set_here and set_here <= set(STATUSES), set_here - set(STATUSES)
