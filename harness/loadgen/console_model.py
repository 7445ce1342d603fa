"""What the game-day console shows, computed from the run directory as it grows: the
timeline of the requests so far, the fault windows (past, active, planned), the fleet, the
fault kinds a plan lets the console inject and the spec a form makes of one.

Pure data and file reading: no Locust, gevent or Flask here (`console` wires this into
Locust's web UI), so every piece is tested without a browser.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..checks.run import FaultOp
from ..checks.stats import percentile
from ..checks.timeline import fault_windows
from ..errors import UsageError
from ..experiment import (
    ADMIN_KINDS,
    PROCESS_ACTIONS,
    TOXIC_ATTRIBUTES,
    AdminFaultSpec,
    ContainerFaultSpec,
    CpuHogSpec,
    Experiment,
    FaultSpec,
    MemoryHogSpec,
    ProcessFaultSpec,
    ProxyDownSpec,
    ToxicSpec,
)
from ..runner.rundir import EVENTS_FILE, EXPERIMENT_FILE, HISTORY_FILE, TELEMETRY_FILE

__all__ = ["BUCKET_S", "Field", "JsonlTail", "LiveTimeline", "allowed_kinds", "fault_spec",
           "fleet_view", "form_fields", "planned_faults", "snapshot_run_dir", "windows_view"]

BUCKET_S = 2.0  # seconds per point of the timeline


class JsonlTail:
    """Reads the lines appended to a JSON Lines file since the last call (a torn last line
    waits for its end; a line that is not JSON is skipped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        out: list[dict[str, Any]] = []
        for raw in lines:
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out


@dataclass
class _Bucket:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    counted: int = 0
    errors: int = 0
    tokens: int = 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class LiveTimeline:
    """Requests so far in `width`-second buckets from `t0` (Unix seconds): TTFT p50/p95 and
    ITL p95 of the requests sent in a bucket, their error rate, and the output tokens/s of
    the requests that ended in it. Interrupted requests (the test stopped them) do not count,
    as in the checks."""

    def __init__(self, t0: float, width: float = BUCKET_S) -> None:
        self.t0 = t0
        self.width = width
        self._sent: dict[int, _Bucket] = {}
        self._ended: dict[int, int] = {}
        self.requests = 0

    def _index(self, t: float) -> int:
        return max(0, int((t - self.t0) // self.width))

    def add(self, lines: Iterable[Mapping[str, Any]]) -> None:
        """Take history lines; all but `chat` lines are ignored."""
        for line in lines:
            value = line.get("value")
            if line.get("f", "chat") != "chat" or not isinstance(value, dict):
                continue
            sent, end = _num(value.get("sent_at")), _num(line.get("time"))
            status = value.get("status")
            if sent is None or end is None or status == "interrupted":
                continue
            self.requests += 1
            bucket = self._sent.setdefault(self._index(sent), _Bucket())
            bucket.counted += 1
            if status != "ok":
                bucket.errors += 1
                continue
            ttft = _num(value.get("ttft"))
            if ttft is not None:
                bucket.ttft.append(ttft)
            gaps = value.get("itl")
            if isinstance(gaps, list):
                bucket.itl.extend(g for g in (_num(x) for x in gaps) if g is not None)
            tokens = value.get("output_tokens")
            if isinstance(tokens, int) and not isinstance(tokens, bool):
                i = self._index(end)
                self._ended[i] = self._ended.get(i, 0) + tokens

    def series(self, now: float) -> dict[str, list[float | None]]:
        """One point per bucket up to `now` (the bucket in progress left out of the rates):
        `t` (bucket start, seconds from t0), latencies in milliseconds, error rate 0..1."""
        last = self._index(now)
        out: dict[str, list[float | None]] = {k: [] for k in (
            "t", "ttft_p50", "ttft_p95", "itl_p95", "error_rate", "tokens_per_s")}
        for i in range(last + 1):
            b = self._sent.get(i, _Bucket())
            done = i < last  # a bucket still filling would show a false dip in throughput
            out["t"].append(i * self.width)
            out["ttft_p50"].append(_ms(percentile(b.ttft, 0.5)))
            out["ttft_p95"].append(_ms(percentile(b.ttft, 0.95)))
            out["itl_p95"].append(_ms(percentile(b.itl, 0.95)))
            out["error_rate"].append(round(b.errors / b.counted, 4) if b.counted else None)
            out["tokens_per_s"].append(round(self._ended.get(i, 0) / self.width, 1)
                                       if done else None)
        return out


def windows_view(lines: Sequence[Mapping[str, Any]], t0: float, now: float
                 ) -> list[dict[str, Any]]:
    """The fault windows of the nemesis lines so far, in seconds from t0: `end` None while
    the fault is active."""
    ops = []
    for x in lines:
        t, value = _num(x.get("time")), x.get("value")
        if x.get("f") in ("inject", "revert") and t is not None:
            ops.append(FaultOp(str(x["f"]), str(x.get("type")), t,
                               value if isinstance(value, dict) else {}))
    out = []
    for w in fault_windows(ops, now):
        value = w.value
        out.append({"inject": w.inject_id, "fault": w.fault, "start": round(w.start - t0, 3),
                    "end": round(w.end - t0, 3) if w.reverted else None,
                    "workers": list(value.get("workers") or []),
                    "by": value.get("by", "schedule")})
    return out


def planned_faults(plan: Sequence[tuple[float, int]], names: Sequence[str],
                   durations: Sequence[float], offset: float) -> list[dict[str, Any]]:
    """The schedule's injections (`FaultInjector.plan`) in seconds from t0, the schedule
    having started `offset` seconds after t0."""
    return [{"fault": names[i], "start": round(offset + at, 3),
             "end": round(offset + at + durations[i], 3)} for at, i in plan]


def fleet_view(sample: Mapping[str, Any] | None, events: Sequence[Mapping[str, Any]]
               ) -> dict[str, Any]:
    """The observer's latest sample as rows (id, state, pid, private MiB, ongoing, restarts:
    the latest `restarted` event's count) and the target's events, newest first."""
    restarts: dict[str, int] = {}
    for event in events:
        if event.get("kind", event.get("type")) == "restarted" and "worker" in event:
            restarts[str(event["worker"])] = int(event.get("restarts") or 0)
    workers = []
    for w in (sample or {}).get("workers") or ():
        if not isinstance(w, dict):
            continue
        private = w.get("private_bytes") or w.get("rss_bytes")
        workers.append({"id": w.get("id"), "state": w.get("state"), "pid": w.get("pid"),
                        "private_mib": round(private / 2**20, 1)
                        if isinstance(private, int | float) else None,
                        "ongoing": w.get("ongoing"),
                        "restarts": restarts.get(str(w.get("id")), 0)})
    return {"time": (sample or {}).get("time"), "workers": workers,
            "errors": list((sample or {}).get("errors") or ()),
            "events": [dict(e) for e in reversed(events[-50:])]}


# -- faults by hand ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One input of the inject form: its name, `number`/`text`/`choice`, default, choices."""

    name: str
    type: str
    default: Any = None
    choices: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default,
                "choices": list(self.choices)}


_ADMIN_PARAMS = {
    "latency": ("latency_s",), "slow_tokens": ("delay_s",),
    "error_rate": ("probability", "status"), "hang": (), "truncate": ("after_tokens",),
    "memory_leak": ("mb_per_s", "cap_mb"), "cpu_burn": ("threads",),
}
_DEFAULTS: dict[str, Any] = {"latency_s": 0.3, "delay_s": 0.05, "probability": 0.5,
                             "status": "503", "after_tokens": 3, "mb_per_s": 20, "cap_mb": 512,
                             "threads": 1, "latency": 300, "jitter": 0, "rate": 16,
                             "average_size": 16, "size_variation": 4, "delay": 100,
                             "timeout": 0, "bytes": 1024, "events": 3}


def _victims(on: str) -> list[Field]:
    return [Field("on", "choice", on, ("worker", "router")), Field("count", "number", 1),
            Field("workers", "text", "")]


def allowed_kinds(experiment: Experiment, admin_token: str | None) -> list[str]:
    """The fault kinds the console may inject for this plan: admin and process faults when
    the reference target's admin token is known; network, host and container faults of the
    families the plan itself names (their proxy, host or containers are then its own)."""
    kinds: list[str] = []
    if admin_token and experiment.target.adapter == "reference":
        kinds += [f"admin-{k}" for k in ADMIN_KINDS] + [f"process-{a}" for a in PROCESS_ACTIONS]
    named = {f.kind for f in experiment.faults}
    if any(isinstance(f, ToxicSpec | ProxyDownSpec) for f in experiment.faults):
        kinds += [f"network-{t}" for t in TOXIC_ATTRIBUTES] + ["network-down"]
    kinds += sorted(k for k in named if k.startswith(("host-", "container-")))
    return kinds


def form_fields(kind: str) -> list[Field]:
    """The inputs of the inject form for `kind` (`for` first: how long it stays)."""
    fields = [Field("for", "number", 30)]
    family, _, name = kind.partition("-")
    if family == "admin":
        fields += _victims("worker")
        fields += [Field(p, "choice", "503", ("500", "503")) if p == "status"
                   else Field(p, "number", _DEFAULTS[p]) for p in _ADMIN_PARAMS[name]]
    elif family == "process":
        fields += _victims("worker")
    elif kind == "host-cpu-hog":
        fields.append(Field("processes", "number", 1))
    elif kind == "host-memory-hog":
        fields.append(Field("mb", "number", 256))
    elif family == "network" and name in TOXIC_ATTRIBUTES:
        fields += [Field(a, "number", _DEFAULTS.get(a, 0)) for a in TOXIC_ATTRIBUTES[name]]
    return fields


_SPEC: TypeAdapter[Any] = TypeAdapter(FaultSpec)


def _template(experiment: Experiment, kind: str) -> dict[str, Any]:
    """Where a fault of `kind` acts, from the plan's first fault of its family (proxy API and
    name, container selector); nothing for admin, process and host faults."""
    for spec in experiment.faults:
        if kind.startswith("network-") and isinstance(spec, ToxicSpec | ProxyDownSpec):
            return {"api": spec.api, "proxy": spec.proxy}
        if kind.startswith("container-") and isinstance(spec, ContainerFaultSpec):
            return spec.model_dump(include={"container", "label", "network"},
                                   exclude_none=True)
    return {}


def fault_spec(experiment: Experiment, admin_token: str | None, form: Mapping[str, Any]
               ) -> AdminFaultSpec | ProcessFaultSpec | ToxicSpec | ProxyDownSpec \
        | CpuHogSpec | MemoryHogSpec | ContainerFaultSpec:
    """The fault spec an inject form describes, validated as an experiment file's would be;
    UsageError naming the field when it is not allowed or not valid."""
    kind = str(form.get("kind", ""))
    if kind not in allowed_kinds(experiment, admin_token):
        raise UsageError(f"kind: {kind or '(none)'} is not one this plan allows; allowed: "
                         f"{', '.join(allowed_kinds(experiment, admin_token)) or 'none'}")
    known = {f.name: f for f in form_fields(kind)}
    unknown = sorted(set(form) - set(known) - {"kind"})
    if unknown:
        raise UsageError(f"{unknown[0]}: not a field of {kind}; its fields are "
                         f"{', '.join(known)}")
    data: dict[str, Any] = {"kind": kind, **_template(experiment, kind)}
    params: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for name, value in form.items():
        if name == "kind" or value in (None, ""):
            continue
        family = kind.partition("-")[0]
        if name == "workers":
            data["workers"] = [w.strip() for w in str(value).split(",") if w.strip()]
        elif name == "status":
            params["status"] = int(value) if str(value).isdigit() else value
        elif family == "admin" and name not in ("for", "on", "count"):
            params[name] = value
        elif family == "network" and name != "for":
            attributes[name] = value
        else:
            data[name] = value
    if params:
        data["params"] = params
    if attributes:
        data["attributes"] = attributes
    try:
        spec = _SPEC.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).endswith("-*"))
        raise UsageError(f"{where or 'form'}: {first['msg']}") from exc
    assert isinstance(spec, AdminFaultSpec | ProcessFaultSpec | ToxicSpec | ProxyDownSpec
                      | CpuHogSpec | MemoryHogSpec | ContainerFaultSpec)
    return spec


# -- verdicts so far ---------------------------------------------------------------------------


def snapshot_run_dir(run_dir: Path, extra_history: Path, events: Sequence[Mapping[str, Any]]
                     ) -> Path:
    """A temporary run directory holding the run as it stands: history.jsonl with the
    harness's own lines (`extra_history`, merged into it only at the end) appended, the
    target's events so far, and links to the telemetry and the experiment, so the checks
    read it as `llm-chaos check` reads the finished run. The caller removes it."""
    snap = Path(tempfile.mkdtemp(prefix="llm-chaos-console-"))
    try:
        with open(snap / HISTORY_FILE, "wb") as out:
            for source in (run_dir / HISTORY_FILE, extra_history):
                if source.is_file():
                    with open(source, "rb") as fh:
                        data = fh.read()
                    # a line being written is cut at its last complete end
                    out.write(data[:data.rfind(b"\n") + 1])
        if events:
            (snap / EVENTS_FILE).write_text(
                "".join(json.dumps(dict(e)) + "\n" for e in events), encoding="utf-8")
        for name in os.listdir(run_dir):
            # not the audit log: in the middle of a run its open requests look lost
            if name in (TELEMETRY_FILE, EXPERIMENT_FILE):
                os.symlink(run_dir.resolve() / name, snap / name)
    except BaseException:
        shutil.rmtree(snap, ignore_errors=True)
        raise
    return snap
