"""Concurrent streaming chat completions against an OpenAI-compatible server, timed.

A batch starts every request at once (one async client, one connection each) and its wall
time runs from before the first request to the end of the last stream, so aggregate output
tokens/s = total output tokens / wall time. Times follow the project's metric definitions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import TargetError
from ..loadgen.sse import aiter_events

__all__ = ["BatchTiming", "StreamTiming", "measure_batch"]

Clock = Callable[[], float]


@dataclass(frozen=True)
class StreamTiming:
    """One completed stream: its text, output tokens and times in seconds."""

    text: str
    output_tokens: int
    ttft: float
    e2e: float
    prompt_tokens: int | None = None  # the server's usage.prompt_tokens, when it sent usage
    gaps: tuple[float, ...] = ()  # seconds between consecutive content chunks (inter-token)


@dataclass(frozen=True)
class BatchTiming:
    """Requests that ran together, and the wall time of the whole batch."""

    streams: tuple[StreamTiming, ...]
    wall: float

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.streams)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall if self.wall > 0 else 0.0


async def _stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                       clock: Clock) -> StreamTiming:
    start = clock()
    first: float | None = None
    pieces: list[str] = []
    usage: int | None = None
    prompt_tokens: int | None = None
    finished = False
    content_chunks = 0
    stamps: list[float] = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise TargetError(f"chat completion answered {resp.status_code}: "
                              f"{(await resp.aread()).decode(errors='replace')[:500]}")
        async for event in aiter_events(resp.aiter_bytes()):
            data = event.data.strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise TargetError(f"stream ended with an error frame: {chunk['error']}")
            if chunk.get("usage"):
                usage = int(chunk["usage"]["completion_tokens"])
                prompt_tokens = chunk["usage"].get("prompt_tokens")
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    stamps.append(clock())
                    if first is None:
                        first = stamps[-1]
                    pieces.append(piece)
                    content_chunks += 1
                if choice.get("finish_reason"):
                    finished = True
    end = clock()
    if not finished:
        raise TargetError("a stream was cut before its finish_reason")
    return StreamTiming(text="".join(pieces),
                        output_tokens=usage if usage is not None else content_chunks,
                        ttft=(first if first is not None else end) - start, e2e=end - start,
                        prompt_tokens=int(prompt_tokens) if prompt_tokens is not None else None,
                        gaps=tuple(b - a for a, b in itertools.pairwise(stamps)))


async def _batch(url: str, model: str, prompts: Sequence[str], max_tokens: int,
                 clock: Clock, timeout: float, ignore_eos: bool,
                 extra_body: Mapping[str, Any]) -> BatchTiming:
    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        bodies = [{"model": model, "messages": [{"role": "user", "content": p}],
                   "max_tokens": max_tokens, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True},
                   **({"ignore_eos": True} if ignore_eos else {}), **extra_body}
                  for p in prompts]
        start = clock()
        streams = await asyncio.gather(*(_stream_chat(client, url, b, clock) for b in bodies))
        wall = clock() - start
    return BatchTiming(tuple(streams), wall)


def measure_batch(url: str, model: str, prompts: Sequence[str], max_tokens: int, *,
                  clock: Clock = time.perf_counter, timeout: float = 600.0,
                  ignore_eos: bool = True,
                  extra_body: Mapping[str, Any] | None = None) -> BatchTiming:
    """Stream one chat per prompt, all at once, greedy and ignoring EOS (`ignore_eos=False`
    for servers that reject the field; `extra_body` adds server-specific fields); raise
    TargetError when any of them fails."""
    try:
        return asyncio.run(_batch(url, model, prompts, max_tokens, clock, timeout, ignore_eos,
                                  extra_body or {}))
    except httpx.HTTPError as exc:
        raise TargetError(f"streaming from {url} failed: {exc!r}") from exc
