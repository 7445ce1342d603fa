"""History records of requests and the run directory they go to (see DESIGN.md).

One line per request, written when it ends, in the run directory's schema
(`harness.runner.rundir.RequestRecord`: the line's fields, times and status vocabulary).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runner.rundir import HISTORY_FILE, RequestRecord
from .client import Outcome
from .metrics import summarize
from .tokens import TokenCounter

__all__ = ["Clock", "HistoryWriter", "PendingRecord", "default_run_dir"]


@dataclass(frozen=True)
class Clock:
    """Monotonic time for durations, mapped to Unix time by one offset taken at start."""

    mono: Callable[[], float] = time.monotonic
    offset: float = 0.0

    @classmethod
    def now(cls) -> Clock:
        return cls(time.monotonic, time.time() - time.monotonic())

    def wall(self, mono: float) -> float:
        return mono + self.offset


@dataclass(frozen=True)
class PendingRecord:
    """A finished request whose record is not yet built (token counting happens off the loop)."""

    outcome: Outcome
    scenario: str
    api: str
    process: str
    phase: str
    scheduled_mono: float | None
    prompt_tokens_client: int | None
    wall_offset: float
    # the tokenizer's count of the answer when the user already made it (no usage sent)
    output_tokens_counted: int | None = None
    max_tokens: int | None = None  # the request's limit (max_tokens in its body)

    def to_line(self, tokenizer: TokenCounter | None) -> dict[str, Any]:
        """The history line of this request (counts tokens with `tokenizer`)."""
        out = self.outcome
        count: Callable[[str], int] | None = tokenizer.count if tokenizer is not None else None
        if self.output_tokens_counted is not None:
            count = _counted(self.output_tokens_counted)
        m = summarize(out, count)
        wall = self.wall_offset
        return RequestRecord(
            request_id=out.request_id, status=out.status, sent_at=out.sent_mono + wall,
            end=out.end_mono + wall, process=self.process, scenario=self.scenario, api=self.api,
            phase=self.phase,
            scheduled_at=None if self.scheduled_mono is None else self.scheduled_mono + wall,
            sent_monotonic=out.sent_mono, max_tokens=self.max_tokens,
            prompt_tokens=(out.usage_prompt if out.usage_prompt is not None
                           else self.prompt_tokens_client),
            prompt_tokens_client=self.prompt_tokens_client,
            ttft=m.ttft, itl=tuple(m.itl), tpot=m.tpot, e2e=m.e2e,
            output_tokens=m.output_tokens, output_tokens_usage=m.output_tokens_usage,
            output_tokens_tokenizer=m.output_tokens_tokenizer,
            output_tokens_source=m.output_tokens_source,
            output_tokens_difference=m.token_count_difference, text_sha256=m.text_sha256,
            tokenizer=tokenizer.name if tokenizer is not None else None,
            error=out.error, http_status=out.http_status, finish_reason=out.finish_reason,
            deviations=tuple(out.deviations), retry_after=out.retry_after, events=out.events,
            bytes=out.bytes_received).to_line()


def _counted(n: int) -> Callable[[str], int]:
    """A token count made already (by the user, off the loop), standing in for the tokenizer."""
    return lambda _text: n


class HistoryWriter:
    """Appends lines to `history.jsonl`; call from a real thread, never the event loop."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / HISTORY_FILE
        self.count = 0

    def write(self, lines: Iterable[dict[str, Any]]) -> int:
        text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        if not text:
            return 0
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
        n = text.count("\n")
        self.count += n
        return n


def default_run_dir(root: Path = Path("reports")) -> Path:
    """`reports/<UTC time>-<pid>`: unique per Locust process start."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return root / f"{stamp}-{os.getpid()}"
