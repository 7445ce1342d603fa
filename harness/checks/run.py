"""A recorded run, read from its directory into typed records (the checks' only input).

Reading is forgiving where a crash can leave a mark (a torn last line is skipped and counted),
and strict where the user pointed at the wrong thing (no `history.jsonl`: UsageError).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

__all__ = ["FaultOp", "ProbeRecord", "Request", "RunData", "Sample", "load_run"]

# Statuses of harness/loadgen/client.py: which ones mean the server broke a promise.
SILENT_CUT = frozenset({"truncated"})
NOT_COUNTED = frozenset({"interrupted"})  # the test itself stopped the request


@dataclass(frozen=True)
class Request:
    """One `chat` line of history.jsonl (times in Unix seconds, durations in seconds)."""

    request_id: str
    type: str
    status: str
    sent_at: float
    end: float
    ttft: float | None = None
    itl: tuple[float, ...] = ()
    tpot: float | None = None
    e2e: float | None = None
    output_tokens: int | None = None
    output_tokens_source: str | None = None
    prompt_tokens: int | None = None
    text_sha256: str | None = None
    error: str | None = None
    http_status: int | None = None
    scenario: str = ""
    process: str = ""
    deviations: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def counted(self) -> bool:
        """Whether it counts in service levels (requests the test itself cut do not)."""
        return self.status not in NOT_COUNTED


@dataclass(frozen=True)
class FaultOp:
    """One nemesis line: `f` inject / revert / abort, Jepsen `type`."""

    f: str
    type: str
    time: float
    value: Mapping[str, Any]


@dataclass(frozen=True)
class ProbeRecord:
    """One steady-state probe line (`f: probe`)."""

    name: str
    type: str
    time: float
    when: str | None
    value: Mapping[str, Any]


@dataclass(frozen=True)
class Sample:
    """One telemetry sample: live worker count, total RSS and ongoing requests, if given."""

    time: float
    workers: int | None
    rss_bytes: int | None
    ongoing: int | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class RunData:
    """Everything a run directory holds that the checks read."""

    path: Path
    requests: tuple[Request, ...]
    faults: tuple[FaultOp, ...] = ()
    probes: tuple[ProbeRecord, ...] = ()
    telemetry: tuple[Sample, ...] | None = None
    events: tuple[Mapping[str, Any], ...] | None = None
    audit_paths: tuple[Path, ...] = ()
    experiment: Mapping[str, Any] = field(default_factory=dict)
    skipped_lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def start(self) -> float:
        times = [r.sent_at for r in self.requests] + [f.time for f in self.faults]
        return min(times) if times else 0.0

    @property
    def end(self) -> float:
        times = [r.end for r in self.requests] + [f.time for f in self.faults]
        return max(times) if times else 0.0

    @property
    def seed(self) -> Any:
        return self.experiment.get("seed")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_jsonl(path: Path, skipped: dict[str, int]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except ValueError:
                skipped[path.name] = skipped.get(path.name, 0) + 1
                continue
            if isinstance(item, dict):
                lines.append(item)
            else:
                skipped[path.name] = skipped.get(path.name, 0) + 1
    return lines


def _request(line: Mapping[str, Any]) -> Request | None:
    value = line.get("value")
    if not isinstance(value, dict):
        return None
    sent = _num(value.get("sent_at"))
    end = _num(line.get("time"))
    rid = _str(value.get("request_id"))
    if sent is None or end is None or rid is None:
        return None
    itl = value.get("itl")
    gaps = tuple(g for g in (_num(x) for x in itl) if g is not None) \
        if isinstance(itl, list) else ()
    devs = value.get("deviations")
    return Request(
        request_id=rid, type=str(line.get("type")), status=str(value.get("status", "")),
        sent_at=sent, end=end, ttft=_num(value.get("ttft")), itl=gaps,
        tpot=_num(value.get("tpot")), e2e=_num(value.get("e2e")),
        output_tokens=_int(value.get("output_tokens")),
        output_tokens_source=_str(value.get("output_tokens_source")),
        prompt_tokens=_int(value.get("prompt_tokens")),
        text_sha256=_str(value.get("text_sha256")), error=_str(value.get("error")),
        http_status=_int(value.get("http_status")), scenario=str(value.get("scenario", "")),
        process=str(line.get("process", "")),
        deviations=tuple(str(d) for d in devs) if isinstance(devs, list) else ())


def _sample(line: Mapping[str, Any]) -> Sample | None:
    t = _num(line.get("time"))
    if t is None:
        return None
    workers = line.get("workers")
    count: int | None = None
    rss: int | None = _int(line.get("rss_bytes"))
    ongoing: int | None = _int(line.get("ongoing"))
    if isinstance(workers, list):
        alive = [w for w in workers if isinstance(w, dict)
                 and w.get("state") not in ("dead", "draining", "stopped")]
        count = len(alive)
        sizes = [_int(w.get("rss_bytes")) for w in workers if isinstance(w, dict)]
        if rss is None and any(s is not None for s in sizes):
            rss = sum(s for s in sizes if s is not None)
        busy = [_int(w.get("ongoing")) for w in alive]
        if ongoing is None and any(b is not None for b in busy):
            ongoing = sum(b for b in busy if b is not None)
    else:
        for key in ("workers", "worker_count", "live_workers"):
            count = _int(line.get(key))
            if count is not None:
                break
    return Sample(t, count, rss, ongoing, line)


def _experiment(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _audit_paths(run_dir: Path) -> tuple[Path, ...]:
    active = run_dir / "audit.jsonl"
    prefix = active.name + "."
    rotated = sorted((int(p.name[len(prefix):]), p) for p in run_dir.iterdir()
                     if p.name.startswith(prefix) and p.name[len(prefix):].isdigit())
    found = [p for _, p in rotated]
    if active.is_file():
        found.append(active)
    return tuple(found)


def load_run(run_dir: Path) -> RunData:
    """Read `run_dir`; UsageError when it is not a run directory."""
    if not run_dir.is_dir():
        raise UsageError(f"check: {run_dir} is not a directory; give a run directory such "
                         "as reports/<run-id>")
    history = run_dir / "history.jsonl"
    if not history.is_file():
        raise UsageError(f"check: {run_dir} has no history.jsonl; give the run directory "
                         "that `locust -f scenarios/ --run-dir` or `llm-chaos run` wrote")
    skipped: dict[str, int] = {}
    requests: list[Request] = []
    faults: list[FaultOp] = []
    probes: list[ProbeRecord] = []
    for line in read_jsonl(history, skipped):
        f = line.get("f")
        t = _num(line.get("time"))
        value = line.get("value")
        value = value if isinstance(value, dict) else {}
        if f == "chat" or (f is None and "request_id" in value):
            request = _request(line)
            if request is None:
                skipped["history.jsonl"] = skipped.get("history.jsonl", 0) + 1
            else:
                requests.append(request)
        elif f in ("inject", "revert", "abort") and t is not None:
            faults.append(FaultOp(str(f), str(line.get("type")), t, value))
        elif f == "probe" and t is not None:
            probes.append(ProbeRecord(str(value.get("name", value.get("probe", "probe"))),
                                      str(line.get("type")), t,
                                      _str(value.get("when", value.get("phase"))), value))
    telemetry: tuple[Sample, ...] | None = None
    if (run_dir / "telemetry.jsonl").is_file():
        samples = [_sample(x) for x in read_jsonl(run_dir / "telemetry.jsonl", skipped)]
        telemetry = tuple(sorted((s for s in samples if s is not None), key=lambda s: s.time))
    events: tuple[Mapping[str, Any], ...] | None = None
    if (run_dir / "events.jsonl").is_file():
        events = tuple(sorted((e for e in read_jsonl(run_dir / "events.jsonl", skipped)
                               if _num(e.get("time")) is not None),
                              key=lambda e: float(e["time"])))
    return RunData(
        path=run_dir,
        requests=tuple(sorted(requests, key=lambda r: (r.sent_at, r.request_id))),
        faults=tuple(sorted(faults, key=lambda f: f.time)), probes=tuple(probes),
        telemetry=telemetry, events=events, audit_paths=_audit_paths(run_dir),
        experiment=_experiment(run_dir / "experiment.yaml"), skipped_lines=skipped)


def by_id(requests: Sequence[Request]) -> dict[str, list[Request]]:
    """Requests grouped by request id (a correct client never reuses one)."""
    out: dict[str, list[Request]] = {}
    for r in requests:
        out.setdefault(r.request_id, []).append(r)
    return out
