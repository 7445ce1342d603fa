"""A recorded run, read from its directory into typed records (the checks' only input).

Reading is forgiving where a crash can leave a mark (a torn last line is skipped and counted),
and strict where the user pointed at the wrong thing (no `history.jsonl`: UsageError).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..runner.rundir import (
    AUDIT_FILE,
    EVENTS_FILE,
    EXPERIMENT_FILE,
    HISTORY_FILE,
    SILENT_CUT,
    TELEMETRY_FILE,
    RequestRecord,
    json_float,
    json_int,
    json_str,
)

__all__ = ["SILENT_CUT", "FaultOp", "ProbeRecord", "RequestRecord", "RunData", "Sample",
           "load_run"]

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
    requests: tuple[RequestRecord, ...]
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


def _sample(line: Mapping[str, Any]) -> Sample | None:
    t = json_float(line.get("time"))
    if t is None:
        return None
    workers = line.get("workers")
    count: int | None = None
    rss: int | None = json_int(line.get("rss_bytes"))
    ongoing: int | None = json_int(line.get("ongoing"))
    if isinstance(workers, list):
        alive = [w for w in workers if isinstance(w, dict)
                 and w.get("state") not in ("dead", "draining", "stopped")]
        count = len(alive)
        sizes = [json_int(w.get("rss_bytes")) for w in workers if isinstance(w, dict)]
        if rss is None and any(s is not None for s in sizes):
            rss = sum(s for s in sizes if s is not None)
        busy = [json_int(w.get("ongoing")) for w in alive]
        if ongoing is None and any(b is not None for b in busy):
            ongoing = sum(b for b in busy if b is not None)
    else:
        for key in ("workers", "worker_count", "live_workers"):
            count = json_int(line.get(key))
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
    active = run_dir / AUDIT_FILE
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
    history = run_dir / HISTORY_FILE
    if not history.is_file():
        raise UsageError(f"check: {run_dir} has no history.jsonl; give the run directory "
                         "that `locust -f scenarios/ --run-dir` or `llm-chaos run` wrote")
    skipped: dict[str, int] = {}
    requests: list[RequestRecord] = []
    faults: list[FaultOp] = []
    probes: list[ProbeRecord] = []
    for line in read_jsonl(history, skipped):
        f = line.get("f")
        t = json_float(line.get("time"))
        value = line.get("value")
        value = value if isinstance(value, dict) else {}
        if f == "chat" or (f is None and "request_id" in value):
            request = RequestRecord.from_line(line)
            if request is None:
                skipped[HISTORY_FILE] = skipped.get(HISTORY_FILE, 0) + 1
            else:
                requests.append(request)
        elif f in ("inject", "revert", "abort") and t is not None:
            faults.append(FaultOp(str(f), str(line.get("type")), t, value))
        elif f == "probe" and t is not None:
            probes.append(ProbeRecord(str(value.get("name", value.get("probe", "probe"))),
                                      str(line.get("type")), t,
                                      json_str(value.get("when", value.get("phase"))), value))
    telemetry: tuple[Sample, ...] | None = None
    if (run_dir / TELEMETRY_FILE).is_file():
        samples = [_sample(x) for x in read_jsonl(run_dir / TELEMETRY_FILE, skipped)]
        telemetry = tuple(sorted((s for s in samples if s is not None), key=lambda s: s.time))
    events: tuple[Mapping[str, Any], ...] | None = None
    if (run_dir / EVENTS_FILE).is_file():
        events = tuple(sorted((e for e in read_jsonl(run_dir / EVENTS_FILE, skipped)
                               if json_float(e.get("time")) is not None),
                              key=lambda e: float(e["time"])))
    return RunData(
        path=run_dir,
        requests=tuple(sorted(requests, key=lambda r: (r.sent_at, r.request_id))),
        faults=tuple(sorted(faults, key=lambda f: f.time)), probes=tuple(probes),
        telemetry=telemetry, events=events, audit_paths=_audit_paths(run_dir),
        experiment=_experiment(run_dir / EXPERIMENT_FILE), skipped_lines=skipped)


def by_id(requests: Sequence[RequestRecord]) -> dict[str, list[RequestRecord]]:
    """Requests grouped by request id (a correct client never reuses one)."""
    out: dict[str, list[RequestRecord]] = {}
    for r in requests:
        out.setdefault(r.request_id, []).append(r)
    return out
