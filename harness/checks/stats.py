"""Statistics over a set of requests, and whether they meet the configured service levels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import RequestSlo, SloConfig
from .run import RequestRecord

__all__ = ["LATENCIES", "QUANTILES", "Stats", "latency_samples", "meets_request_slo",
           "percentile", "stats", "tokens", "violations"]

LATENCIES = ("ttft", "itl", "tpot", "e2e")
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_samples(requests: Sequence[RequestRecord], metric: str) -> list[float]:
    """The completed requests' samples of `metric` (ITL: every gap of every stream)."""
    ok = [r for r in requests if r.ok]
    if metric == "itl":
        return [g for r in ok for g in r.itl]
    values = (getattr(r, metric) for r in ok)
    return [v for v in values if v is not None]


def tokens(requests: Sequence[RequestRecord]) -> int:
    """Output tokens the completed requests streamed (the evidence behind ITL and TPOT)."""
    return sum(r.output_tokens if r.output_tokens is not None else len(r.itl) + 1
               for r in requests if r.ok)


def meets_request_slo(r: RequestRecord, slo: RequestSlo) -> bool:
    """A completed request within every per-request bound (a figure it lacks is no breach)."""
    if not r.ok:
        return False
    checks = ((slo.ttft, r.ttft), (slo.tpot, r.tpot), (slo.e2e, r.e2e),
              (slo.itl, max(r.itl) if r.itl else None))
    return all(bound is None or value is None or value <= bound for bound, value in checks)


@dataclass(frozen=True)
class Stats:
    """Counts, latency percentiles, error rate and goodput of some requests over `duration`."""

    requests: int
    ok: int
    failed: int
    duration: float
    latency: dict[str, dict[str, float | None]]
    good: int
    tokens: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.requests if self.requests else None

    @property
    def throughput(self) -> float | None:
        return self.ok / self.duration if self.duration > 0 else None

    @property
    def goodput(self) -> float | None:
        return self.good / self.duration if self.duration > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "failed": self.failed,
                "duration_s": round(self.duration, 6), "error_rate": self.error_rate,
                "throughput_rps": self.throughput, "goodput_rps": self.goodput,
                "good": self.good, "tokens": self.tokens, "latency_s": self.latency}


def stats(requests: Sequence[RequestRecord], duration: float, slo: SloConfig) -> Stats:
    """Figures of the counted requests (the test's own interruptions left out)."""
    counted = [r for r in requests if r.counted]
    ok = sum(1 for r in counted if r.ok)
    latency = {m: {name: percentile(latency_samples(counted, m), q) for name, q in QUANTILES}
               for m in LATENCIES}
    good = sum(1 for r in counted if meets_request_slo(r, slo.request))
    return Stats(len(counted), ok, len(counted) - ok, duration, latency, good,
                 tokens(counted))


def violations(s: Stats, slo: SloConfig, *, goodput: bool = True) -> list[str]:
    """Each configured service level that `s` breaks, in words (empty: all met)."""
    found: list[str] = []
    for metric in LATENCIES:
        bounds = getattr(slo, metric)
        for name, _ in QUANTILES:
            bound = getattr(bounds, name)
            value = s.latency[metric][name]
            if bound is not None and value is not None and value > bound:
                found.append(f"{metric} {name} {value:.4g}s > {bound:g}s")
    rate = s.error_rate
    if slo.error_rate is not None and rate is not None and rate > slo.error_rate:
        found.append(f"error rate {rate:.2%} > {slo.error_rate:.2%}")
    gp = s.goodput
    if goodput and slo.goodput_min is not None and gp is not None and gp < slo.goodput_min:
        found.append(f"goodput {gp:.3g}/s < {slo.goodput_min:g}/s")
    return found
