"""The incremental SSE decoder: events complete exactly when their blank line arrives."""

from __future__ import annotations

from harness.loadgen.sse import SSEDecoder, SSEEvent


def test_events_split_across_reads_complete_on_the_blank_line() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a"') == []
    assert dec.pending
    assert dec.feed(b': 1}\n') == []
    assert dec.feed(b"\n") == [SSEEvent('{"a": 1}')]
    assert not dec.pending


def test_several_events_in_one_read_and_line_endings() -> None:
    dec = SSEDecoder()
    events = dec.feed(b"data: one\r\n\r\ndata: two\n\ndata: three\r\r: comment\n\n")
    assert [e.data for e in events] == ["one", "two", "three"]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: x\r") == []
    assert dec.feed(b"\n\r\n") == [SSEEvent("x")]


def test_multiline_data_event_names_and_field_rules() -> None:
    dec = SSEDecoder()
    events = dec.feed(b"event: error\ndata: a\ndata:b\nid: 7\nretry: 5\n\nevent: x\n\n")
    assert events == [SSEEvent("a\nb", "error")]  # an event without data is not dispatched


def test_done_marker_is_plain_data() -> None:
    assert SSEDecoder().feed(b"data: [DONE]\n\n") == [SSEEvent("[DONE]")]
