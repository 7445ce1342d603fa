"""Service levels in seconds for one run: bounds written relative to the run's own baseline
phase (`3x baseline`) resolved against it, once, before anything is judged.

The baseline phase is the requests sent before the first fault; it does not depend on the
service levels, so resolving first and judging the recovery windows after is not circular.
A relative bound resolves only when the baseline phase has `slo.min_requests` completed
requests and the figure has samples there; otherwise it stays unset and is listed in
`unresolved`, and every check that needed it says unknown (never a pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import METRICS, QUANTILES, CheckConfig, Percentiles, Relative, SloConfig
from .run import RequestRecord
from .stats import QUANTILES as LEVELS
from .stats import latency_samples, percentile

__all__ = ["Thresholds", "resolve"]

_Q = dict(LEVELS)
_MAX_TIME = "recovery.max_time"


@dataclass(frozen=True)
class Thresholds:
    """The run's bounds in seconds: `slo` with every percentile absolute (an unresolvable one
    unset), `max_time` likewise, and per bound its written form and seconds as evidence."""

    slo: SloConfig
    max_time: float | None
    resolved: Mapping[str, Any]
    unresolved: Mapping[str, str]  # "ttft p95" / "recovery.max_time" -> why, in words
    baseline_requests: int

    def percentiles_unresolved(self) -> list[str]:
        """The unresolved latency bounds, in words (what the SLOs could not judge)."""
        return [f"{k} {why}" for k, why in self.unresolved.items() if k != _MAX_TIME]

    def to_json(self) -> dict[str, Any]:
        return {"baseline_completed_requests": self.baseline_requests,
                "resolved": dict(self.resolved), "unresolved": dict(self.unresolved)}


def _baseline_figure(ok: Sequence[RequestRecord], metric: str, quantile: str, minimum: int
                     ) -> tuple[float | None, str]:
    if len(ok) < minimum:
        return None, (f"the baseline phase has {len(ok)} completed request(s), fewer than "
                      f"slo.min_requests ({minimum})")
    value = percentile(latency_samples(ok, metric), _Q[quantile])
    if value is None:
        return None, f"the baseline phase has no {metric} samples"
    return value, ""


def _one(bound: float | Relative, metric: str, quantile: str, ok: Sequence[RequestRecord],
         minimum: int) -> tuple[float | None, dict[str, Any]]:
    if not isinstance(bound, Relative):
        return bound, {"written": bound, "seconds": bound}
    of_metric, of_quantile = bound.metric or metric, bound.quantile or quantile
    base, why = _baseline_figure(ok, of_metric, of_quantile, minimum)
    if base is None:
        return None, {"written": str(bound), "seconds": None, "why": why}
    seconds = bound.factor * base
    return seconds, {"written": str(bound), "seconds": seconds,
                     f"baseline_{of_metric}_{of_quantile}_s": base}


def resolve(baseline: Sequence[RequestRecord], config: CheckConfig) -> Thresholds:
    """`config`'s bounds in seconds, relative ones measured on the `baseline` requests."""
    slo = config.slo
    ok = [r for r in baseline if r.counted and r.ok]
    resolved: dict[str, Any] = {}
    unresolved: dict[str, str] = {}
    absolute: dict[str, Percentiles] = {}
    for metric in METRICS:
        written = getattr(slo, metric)
        values: dict[str, float | None] = {}
        for quantile in QUANTILES:
            bound = getattr(written, quantile)
            if bound is None:
                values[quantile] = None
                continue
            values[quantile], record = _one(bound, metric, quantile, ok, slo.min_requests)
            resolved.setdefault(metric, {})[quantile] = record
            if values[quantile] is None:
                unresolved[f"{metric} {quantile}"] = f"'{bound}': {record['why']}"
        absolute[metric] = Percentiles.model_validate(values)
    max_time: float | None = None
    written_max = config.recovery.max_time
    if written_max is not None:
        max_time, record = _one(written_max, "e2e", "p95", ok, slo.min_requests)
        resolved[_MAX_TIME] = record
        if max_time is None:
            unresolved[_MAX_TIME] = f"'{written_max}': {record['why']}"
    return Thresholds(slo.model_copy(update=absolute), max_time, resolved, unresolved, len(ok))
