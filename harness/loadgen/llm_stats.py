"""The LLM table: TTFT, ITL, TPOT and output tokens/s per scenario, from history records.

Locust's own table keeps one row per request (end to end); the figures a token stream adds live
here, computed from the same records the run directory holds (in distributed mode, the master's
merged ones). Plain Python: the Locust side (console, web UI, `--csv`) is in `plugin`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..runner.rundir import NOT_COUNTED

__all__ = ["COLUMNS", "Histogram", "LLMRow", "LLMStats", "counted"]


COLUMNS = (
    "Name", "Request Count", "Failure Count",
    "TTFT 50% (ms)", "TTFT 95% (ms)", "TTFT 99% (ms)",
    "ITL 50% (ms)", "ITL 95% (ms)", "ITL 99% (ms)",
    "TPOT 50% (ms)", "TPOT 95% (ms)",
    "Output Tokens", "Output Tokens/s",
)


def counted(line: Mapping[str, Any]) -> bool:
    """Whether a history line is a request Locust counted (it fired a request event): a request
    cut short by a stopping user fires none (its record is `interrupted`), so the table leaves
    it out too."""
    return line["value"]["status"] not in NOT_COUNTED


class Histogram:
    """Counts of positive values in log buckets 1 % wide: bounded memory over long runs.

    Hand-written (as Locust's own response-time buckets are) because an ITL histogram needs
    sub-millisecond resolution that Locust's integer-millisecond buckets do not have.
    """

    _WIDTH = math.log(1.01)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0

    def add(self, value: float) -> None:
        # values at or below 1 us share one bucket (a clock tick, not a latency)
        key = round(math.log(max(value, 1e-6)) / self._WIDTH)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.n += 1

    def merge(self, other: Histogram) -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self.n += other.n

    def percentile(self, q: float) -> float | None:
        """The value at quantile `q` (0..1), to within 1 %; None when empty."""
        return self.percentiles(q)[0]

    def percentiles(self, *qs: float) -> list[float | None]:
        """The values at ascending quantiles `qs`, in one pass over the buckets."""
        if not self.n:
            return [None] * len(qs)
        out: list[float | None] = []
        keys = iter(sorted(self.counts))
        key = next(keys)
        seen = self.counts[key]
        for q in qs:
            rank = max(1, math.ceil(q * self.n))
            while seen < rank:
                key = next(keys)
                seen += self.counts[key]
            out.append(math.exp(key * self._WIDTH))
        return out


@dataclass
class LLMRow:
    """The figures of one scenario (or of all of them)."""

    name: str
    requests: int = 0
    failures: int = 0
    output_tokens: int = 0
    ttft: Histogram = field(default_factory=Histogram)
    itl: Histogram = field(default_factory=Histogram)
    tpot: Histogram = field(default_factory=Histogram)

    def add(self, value: Mapping[str, Any]) -> None:
        self.requests += 1
        if value["status"] != "ok":
            self.failures += 1
        self.output_tokens += value.get("output_tokens") or 0
        if value.get("ttft") is not None:
            self.ttft.add(value["ttft"])
        for gap in value.get("itl") or ():
            self.itl.add(gap)
        if value.get("tpot") is not None:
            self.tpot.add(value["tpot"])

    def merge(self, other: LLMRow) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.output_tokens += other.output_tokens
        self.ttft.merge(other.ttft)
        self.itl.merge(other.itl)
        self.tpot.merge(other.tpot)

    def cells(self, seconds: float | None) -> list[str]:
        """One row of `COLUMNS` (milliseconds; empty where nothing was measured)."""
        def ms(h: Histogram, *qs: float) -> list[str]:
            return ["" if v is None else f"{v * 1000.0:.2f}" for v in h.percentiles(*qs)]
        rate = "" if not seconds else f"{self.output_tokens / seconds:.1f}"
        return [self.name, str(self.requests), str(self.failures),
                *ms(self.ttft, 0.5, 0.95, 0.99), *ms(self.itl, 0.5, 0.95, 0.99),
                *ms(self.tpot, 0.5, 0.95), str(self.output_tokens), rate]


class LLMStats:
    """Per-scenario rows and an `Aggregated` row, fed history lines.

    `of(lines)` builds the figures of a batch (a user process does it off its event loop, a
    few microseconds per token); `merge` adds them, in time proportional to the buckets only.
    """

    def __init__(self) -> None:
        self.rows: dict[str, LLMRow] = {}
        self.total = LLMRow("Aggregated")
        self.first_sent: float | None = None
        self.last_end: float | None = None

    def reset(self) -> None:
        """Forget everything (Locust's "Reset Stats")."""
        self.rows, self.total = {}, LLMRow("Aggregated")
        self.first_sent = self.last_end = None

    @classmethod
    def of(cls, lines: Iterable[Mapping[str, Any]]) -> LLMStats:
        stats = cls()
        stats.add(lines)
        return stats

    def merge(self, other: LLMStats) -> None:
        for name, row in other.rows.items():
            self.rows.setdefault(name, LLMRow(name)).merge(row)
        self.total.merge(other.total)
        for attr, pick in (("first_sent", min), ("last_end", max)):
            mine, theirs = getattr(self, attr), getattr(other, attr)
            if theirs is not None:
                setattr(self, attr, theirs if mine is None else pick(mine, theirs))

    def add(self, lines: Iterable[Mapping[str, Any]]) -> None:
        for line in lines:
            if not counted(line):
                continue
            value = line["value"]
            name = value.get("scenario") or "?"
            self.rows.setdefault(name, LLMRow(name)).add(value)
            self.total.add(value)
            sent, end = value["sent_at"], line["time"]
            self.first_sent = sent if self.first_sent is None else min(self.first_sent, sent)
            self.last_end = end if self.last_end is None else max(self.last_end, end)

    @property
    def seconds(self) -> float | None:
        """From the first request sent to the last one ended: the tokens/s denominator."""
        if self.first_sent is None or self.last_end is None:
            return None
        return max(self.last_end - self.first_sent, 1e-9)

    def table(self) -> list[list[str]]:
        """`COLUMNS` rows: one per scenario (by name), then `Aggregated`."""
        seconds = self.seconds
        return ([self.rows[k].cells(seconds) for k in sorted(self.rows)]
                + [self.total.cells(seconds)])

    def console_lines(self) -> list[str]:
        """The table as Locust prints its own: fixed-width columns under a title."""
        short = ("Name", "# reqs", "# fails", "TTFT50", "TTFT95", "TTFT99", "ITL50", "ITL95",
                 "ITL99", "TPOT50", "TPOT95", "tokens", "tok/s")
        rows = self.table()
        width = max([len(short[0])] + [len(r[0]) for r in rows])
        fmt = f"%-{width}s " + " ".join(["%7s"] * (len(short) - 1))
        sep = "-" * len(fmt % tuple(short))
        lines = ["LLM stats (ms; from the request records)", fmt % short, sep]
        lines += [fmt % tuple(r) for r in rows[:-1]]
        lines += [sep, fmt % tuple(rows[-1])]
        return lines
