"""Per-request metrics, exactly as DESIGN.md defines them, from an `Outcome`'s raw timestamps.

TTFT = first content-bearing chunk - start; ITL = gaps between consecutive content chunks;
e2e = end of stream ([DONE] or close) - start; TPOT = (e2e - TTFT) / (output tokens - 1);
output tokens = the server's usage when given, else the tokenizer's count of the received text.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from .client import Outcome

__all__ = ["RequestMetrics", "summarize"]


@dataclass(frozen=True)
class RequestMetrics:
    """The figures of one request (seconds; None where the request never got that far)."""

    ttft: float | None
    itl: tuple[float, ...]
    tpot: float | None
    e2e: float
    output_tokens: int | None
    output_tokens_usage: int | None
    output_tokens_tokenizer: int | None
    output_tokens_source: str | None
    text_sha256: str

    @property
    def token_count_difference(self) -> int | None:
        """usage - tokenizer, when both are known (0 when the server counts as we do)."""
        if self.output_tokens_usage is None or self.output_tokens_tokenizer is None:
            return None
        return self.output_tokens_usage - self.output_tokens_tokenizer


def summarize(out: Outcome, count_tokens: Callable[[str], int] | None = None) -> RequestMetrics:
    """Compute the metrics of one finished request; `count_tokens` is the model's tokenizer."""
    times = out.content_times
    ttft = times[0] - out.sent_mono if times else None
    itl = tuple(b - a for a, b in itertools.pairwise(times))
    e2e = out.end_mono - out.sent_mono
    text = out.text
    by_tokenizer = count_tokens(text) if count_tokens is not None else None
    if out.usage_completion is not None:
        tokens: int | None = out.usage_completion
        source: str | None = "usage"
    elif by_tokenizer is not None:
        tokens, source = by_tokenizer, "tokenizer"
    else:
        tokens, source = None, None
    tpot = None
    if ttft is not None and tokens is not None and tokens > 1:
        tpot = (e2e - ttft) / (tokens - 1)
    return RequestMetrics(
        ttft=ttft, itl=itl, tpot=tpot, e2e=e2e, output_tokens=tokens,
        output_tokens_usage=out.usage_completion, output_tokens_tokenizer=by_tokenizer,
        output_tokens_source=source,
        text_sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
