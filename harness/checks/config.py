"""`checks.yaml`: the service levels and limits a run is judged against (pydantic at the YAML
boundary; a mistake is a UsageError naming the field).

A latency percentile bound is either seconds (`p95: 0.5`) or relative to the run's own baseline
phase (`p95: 3x baseline`: three times the same percentile of the same metric over the requests
sent before the first fault), so that a slower machine is held to its own pace.
`recovery.max_time` may be relative too, naming the figure it scales
(`max_time: 20x baseline e2e p95`). `thresholds.py` resolves relative bounds per run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
)

from ..errors import UsageError

__all__ = ["CHECK_NAMES", "METRICS", "PHASES", "QUANTILES", "CheckConfig", "MemoryConfig",
           "Relative", "load_config"]

PHASES = ("baseline", "fault", "recovery", "steady")
Phase = Literal["baseline", "fault", "recovery", "steady"]
CheckName = Literal["slo", "recovery", "scaling", "audit", "steady_state", "memory"]
CHECK_NAMES: tuple[CheckName, ...] = ("slo", "recovery", "scaling", "audit", "steady_state",
                                      "memory")
# memory needs its bound (`memory.max_mb`), so it runs only when named
DEFAULT_CHECKS: tuple[CheckName, ...] = ("slo", "recovery", "scaling", "audit", "steady_state")
Positive = Field(default=None, gt=0)
METRICS = ("ttft", "itl", "tpot", "e2e")
QUANTILES = ("p50", "p95", "p99")


@dataclass(frozen=True)
class Relative:
    """A bound written `<factor>x baseline`: `factor` times a figure of the run's baseline
    phase (the bound's own percentile, or `metric` `quantile` where it names one)."""

    factor: float
    metric: str | None = None
    quantile: str | None = None

    def __str__(self) -> str:
        of = f" {self.metric} {self.quantile}" if self.metric else ""
        return f"{self.factor:g}x baseline{of}"


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SAME = re.compile(rf"{_NUMBER}\s*x\s+baseline", re.IGNORECASE)
_NAMED = re.compile(rf"{_NUMBER}\s*x\s+baseline\s+({'|'.join(METRICS)})\s+"
                    rf"({'|'.join(QUANTILES)})", re.IGNORECASE)


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _bound(value: Any, named: bool) -> float | Relative:
    forms = ("a number of seconds > 0 (e.g. 20) or '<k>x baseline <metric> <p50|p95|p99>' "
             "(e.g. '20x baseline e2e p95')" if named else
             "a number of seconds > 0 (e.g. 0.5) or '<k>x baseline' (e.g. '3x baseline')")
    seconds = _seconds(value)
    if seconds is not None:
        if math.isfinite(seconds) and seconds > 0:
            return seconds
        raise ValueError(f"must be {forms}, not {value!r}")
    match = (_NAMED if named else _SAME).fullmatch(value.strip()) \
        if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"must be {forms}, not {value!r}")
    factor = float(match.group(1))
    if named:
        return Relative(factor, match.group(2).lower(), match.group(3).lower())
    return Relative(factor)


def _written(value: float | Relative) -> float | str:
    return str(value) if isinstance(value, Relative) else value


# seconds, or `<k>x baseline` (the same percentile of the same metric over the baseline phase)
Bound = Annotated[float | Relative, PlainValidator(lambda v: _bound(v, named=False)),
                  PlainSerializer(_written)]
# seconds, or `<k>x baseline <metric> <pNN>` (a duration with no percentile of its own)
NamedBound = Annotated[float | Relative, PlainValidator(lambda v: _bound(v, named=True)),
                       PlainSerializer(_written)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Percentiles(_Model):
    """Upper bounds on a latency's percentiles, in seconds or `<k>x baseline`; unset ones are
    not judged."""

    p50: Bound | None = None
    p95: Bound | None = None
    p99: Bound | None = None


class RequestSlo(_Model):
    """Per-request bounds (seconds): a completed request meeting all of them counts in goodput."""

    ttft: float | None = Positive
    itl: float | None = Positive  # the longest gap of the request
    tpot: float | None = Positive
    # `e2el` as vLLM's bench names it is taken too
    e2e: float | None = Field(default=None, gt=0, validation_alias=AliasChoices("e2e", "e2el"))


class SloConfig(_Model):
    """Service levels over a phase (or a recovery window)."""

    ttft: Percentiles = Percentiles()
    itl: Percentiles = Percentiles()
    tpot: Percentiles = Percentiles()
    e2e: Percentiles = Field(default=Percentiles(),
                             validation_alias=AliasChoices("e2e", "e2el"))
    error_rate: float | None = Field(default=0.01, ge=0, le=1)
    goodput_min: float | None = Field(default=None, ge=0)
    request: RequestSlo = RequestSlo()
    judge_phases: tuple[Phase, ...] = ("baseline", "steady")
    min_requests: int = Field(default=5, ge=1)


class RecoveryConfig(_Model):
    """How recovery is found: a sliding window over request start times must meet the SLOs
    (the `slo` percentiles and error rate) from some point on, and keep meeting them.
    `window` and `step` are minimums: a sparse run gets longer windows (see timeline.py)."""

    window: float = Field(default=5.0, gt=0)
    step: float = Field(default=0.5, gt=0)
    min_requests: int = Field(default=3, ge=1)
    # longest acceptable time to recover: seconds, or `<k>x baseline <metric> <pNN>`
    max_time: NamedBound | None = None
    max_budget_burn: float | None = Positive  # share of the run's error budget one fault may burn


class ScalingConfig(_Model):
    """The autoscaler's promise: scale up within `up_within` s once ongoing requests per worker
    exceed `target_ongoing` for `sustain` s; scale down within `down_within` s once they drop."""

    target_ongoing: float = Field(gt=0)
    up_within: float = Field(default=10.0, gt=0)
    down_within: float = Field(default=30.0, gt=0)
    floor: int = Field(default=1, ge=0)
    ceiling: int | None = Field(default=None, ge=1)
    sustain: float = Field(default=1.0, ge=0)
    step: float = Field(default=0.25, gt=0)


class MemoryConfig(_Model):
    """The memory bound: no worker holds more than `max_mb` MiB of private memory (RSS when
    private memory is not reported) for longer than `grace` seconds at a stretch, the time a
    supervisor needs to notice and replace it."""

    max_mb: float = Field(gt=0)
    grace: float = Field(default=10.0, ge=0)


class CheckConfig(_Model):
    """The whole `checks.yaml` (every section optional)."""

    checks: tuple[CheckName, ...] = DEFAULT_CHECKS
    slo: SloConfig = SloConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    scaling: ScalingConfig | None = None
    memory: MemoryConfig | None = None


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_config(path: Path | None) -> CheckConfig:
    """The config in `path` (defaults when None); UsageError saying which field to change."""
    if path is None:
        return CheckConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"check: cannot read --config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"check: {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"check: {path} must hold a mapping (slo:, recovery:, scaling:, "
                         "memory:, checks:)")
    try:
        return CheckConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        raise UsageError(f"check: {path}: {_where(first['loc'])}: {msg}"
                         + (f" (and {exc.error_count() - 1} more)"
                            if exc.error_count() > 1 else "")) from exc
