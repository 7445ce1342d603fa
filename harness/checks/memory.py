"""The memory check: a worker whose memory grows past the bound (a leak) is replaced within a
grace period, so no worker stays over `max_mb` for longer than `grace` seconds at a stretch.

Memory is each worker's private memory as the target reports it (`private_bytes` in
`/admin/workers`, what the reference supervisor limits), else its RSS; samples come from
`telemetry.jsonl`, one per observer tick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import CheckConfig
from .result import CheckResult, Verdict
from .run import RunData

__all__ = ["check_memory", "memory_series"]

MIB = 2**20


def _memory(worker: Mapping[str, Any]) -> int | None:
    for key in ("private_bytes", "rss_bytes"):
        value = worker.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def memory_series(run: RunData) -> dict[str, list[tuple[float, int]]]:
    """Per worker process (`id/pid`): (time, bytes) samples, in time order."""
    out: dict[str, list[tuple[float, int]]] = {}
    for sample in run.telemetry or ():
        workers = sample.raw.get("workers")
        if not isinstance(workers, list):
            continue
        for w in workers:
            if not isinstance(w, dict):
                continue
            size = _memory(w)
            if size is not None:
                out.setdefault(f"{w.get('id')}/{w.get('pid')}", []).append((sample.time, size))
    return out


@dataclass(frozen=True)
class _Excursion:
    worker: str
    start: float
    end: float  # the first sample back under the bound (or the last sample)
    peak_bytes: int
    ended: bool  # False: still over at the last sample of this process

    def to_json(self, origin: float) -> dict[str, Any]:
        return {"worker": self.worker, "start": round(self.start - origin, 3),
                "seconds": round(self.end - self.start, 3),
                "peak_mb": round(self.peak_bytes / MIB, 1), "ended": self.ended}


def _excursions(worker: str, samples: list[tuple[float, int]], bound: int) -> list[_Excursion]:
    out: list[_Excursion] = []
    start: float | None = None
    peak = 0
    for t, size in samples:
        if size > bound:
            if start is None:
                start, peak = t, 0
            peak = max(peak, size)
        elif start is not None:
            out.append(_Excursion(worker, start, t, peak, True))
            start = None
    if start is not None:
        out.append(_Excursion(worker, start, samples[-1][0], peak, False))
    return out


def check_memory(run: RunData, config: CheckConfig) -> CheckResult:
    """Valid when every excursion over the bound ended within the grace period; invalid when
    one lasted longer; unknown without a bound or without memory samples."""
    mc = config.memory
    if mc is None:
        return CheckResult("memory", Verdict.UNKNOWN,
                           "no `memory:` section in the check config (max_mb, grace)")
    series = memory_series(run)
    if not series:
        return CheckResult("memory", Verdict.UNKNOWN,
                           "no worker memory in telemetry.jsonl (private_bytes or rss_bytes)")
    bound = int(mc.max_mb * MIB)
    excursions = sorted((e for w, s in series.items() for e in _excursions(w, s, bound)),
                        key=lambda e: e.start)
    origin = min(s[0][0] for s in series.values())
    peak = max(size for s in series.values() for _, size in s)
    too_long = [e for e in excursions if e.end - e.start > mc.grace]
    last = max(s[-1][0] for s in series.values())
    # over the bound at the very end, not yet for `grace`: the run ended before it was due
    open_ended = [e for e in excursions if not e.ended and e.end >= last and e not in too_long]
    evidence = {"max_mb": mc.max_mb, "grace": mc.grace, "workers": sorted(series),
                "excursions": [e.to_json(origin) for e in excursions]}
    figures: dict[str, float | int | str | None] = {
        "peak_mb": round(peak / MIB, 1), "excursions": len(excursions),
        "longest_s": round(max((e.end - e.start for e in excursions), default=0.0), 2),
        "too_long": len(too_long)}
    if too_long:
        worst = max(too_long, key=lambda e: e.end - e.start)
        return CheckResult("memory", Verdict.INVALID,
                           f"worker {worst.worker} held over {mc.max_mb:g} MiB for "
                           f"{worst.end - worst.start:.1f} s (grace {mc.grace:g} s; peak "
                           f"{worst.peak_bytes / MIB:.0f} MiB)", evidence, figures)
    if open_ended:
        return CheckResult("memory", Verdict.UNKNOWN,
                           f"worker {open_ended[0].worker} was over {mc.max_mb:g} MiB when the "
                           f"run ended, for less than the grace period ({mc.grace:g} s)",
                           evidence, figures)
    if not excursions:
        return CheckResult("memory", Verdict.VALID,
                           f"every worker stayed under {mc.max_mb:g} MiB (peak "
                           f"{peak / MIB:.0f} MiB)", evidence, figures)
    return CheckResult("memory", Verdict.VALID,
                       f"{len(excursions)} excursion(s) over {mc.max_mb:g} MiB, each over "
                       f"within {mc.grace:g} s (longest {figures['longest_s']} s)",
                       evidence, figures)
