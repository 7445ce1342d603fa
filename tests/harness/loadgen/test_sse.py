"""The incremental SSE decoder: events complete exactly when their blank line arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from harness.loadgen.sse import SSEDecoder, SSEEvent, aiter_events, iter_events, json_objects


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


def test_whole_bodies_and_streams_give_the_same_events() -> None:
    body = (b": keep-alive\n\ndata: {\"seq\": 1}\n\ndata: not json\n\n"
            b"event: x\ndata: [1, 2]\n\ndata: {\"seq\": 2}")  # the last one without its blank line
    assert json_objects(body) == [{"seq": 1}, {"seq": 2}]
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)]
    whole = [e.data for e in iter_events([body])]
    assert [e.data for e in iter_events(chunks)] == whole
    assert whole == ['{"seq": 1}', "not json", "[1, 2]", '{"seq": 2}']

    async def collect() -> list[str]:
        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
        return [e.data async for e in aiter_events(stream())]

    assert asyncio.run(collect()) == whole
