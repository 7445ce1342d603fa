"""The run directory's one schema (DESIGN.md, "Run directory"): its file names, the request line
of `history.jsonl` with its status vocabulary, and the writers both run entry points share
(`llm-chaos run` and Locust's `--chaos-plan`): its path, the target's events, the harness's
history lines, the audit log's copy.

The loadgen writes `RequestRecord.to_line()`; the checks read `RequestRecord.from_line()`.
Import-light on purpose (no Locust, no checks, no experiment model at import time): both sides
import it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import TargetError, UsageError
from ..loadgen.sse import json_objects

if TYPE_CHECKING:
    from ..experiment import Experiment

__all__ = ["AUDIT_FILE", "CHECKS_CONFIG_FILE", "EVENTS_FILE", "EXPERIMENT_FILE", "HISTORY_FILE",
           "NEMESIS_FILE", "NOT_COUNTED", "SILENT_CUT", "STATUSES", "TELEMETRY_FILE",
           "RequestRecord", "copy_audit_log", "fetch_events", "jepsen_type", "json_float",
           "json_int", "json_str", "merge_history", "new_run_dir"]

# -- file names --------------------------------------------------------------------------------

EXPERIMENT_FILE = "experiment.yaml"   # the resolved experiment, seed included
CHECKS_CONFIG_FILE = "checks.yaml"    # the check config the run is judged with
HISTORY_FILE = "history.jsonl"        # requests, fault injects and reverts, probes
TELEMETRY_FILE = "telemetry.jsonl"    # the observer's samples
EVENTS_FILE = "events.jsonl"          # the target's event backlog
AUDIT_FILE = "audit.jsonl"            # the target's audit log (and rotated audit.jsonl.N)
NEMESIS_FILE = "nemesis.jsonl"        # fault and probe lines, merged into the history at the end

# -- the status of a request -------------------------------------------------------------------

# Every status a request line may carry (harness/loadgen/client.py sets them), and its meaning.
STATUSES: Mapping[str, str] = {
    "ok": "finished with a finish_reason, and [DONE] where it streamed",
    "connect_error": "no connection, or it broke before an answer began",
    "timeout": "no answer within the client's timeout",
    "http_error": "an HTTP status other than 200 and 429",
    "rate_limited": "HTTP 429",
    "bad_content_type": "HTTP 200 with a content type other than the API's",
    "malformed_stream": "a body or event that is not JSON, or not an object",
    "error_frame": "the stream carried an error event",
    "truncated": "the answer ended without a finish_reason (a silent cut)",
    "interrupted": "the load generator itself stopped it (the user or the run ended)",
}
# Jepsen: `info` = outcome unknown (the server may or may not have done the work).
OUTCOME_UNKNOWN = frozenset({"timeout", "interrupted"})
SILENT_CUT = frozenset({"truncated"})  # the server broke its promise without saying so
NOT_COUNTED = frozenset({"interrupted"})  # the test itself stopped it: not in service levels


def jepsen_type(status: str) -> str:
    """`ok` / `fail` / `info` (outcome unknown) for a request status."""
    if status == "ok":
        return "ok"
    return "info" if status in OUTCOME_UNKNOWN else "fail"


# -- the request line of history.jsonl ---------------------------------------------------------

def json_float(value: Any) -> float | None:
    """A finite JSON number as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def json_int(value: Any) -> int | None:
    """A JSON integer (not a boolean), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def json_str(value: Any) -> str | None:
    """A JSON string, else None."""
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class RequestRecord:
    """One request, as its `history.jsonl` line holds it: `{"type": ok|fail|info, "f": "chat",
    "process", "time": end, "value": {every other field}}`. Times are Unix seconds (`end`,
    `sent_at`, `scheduled_at`), derived from the monotonic clock the durations come from
    (`sent_monotonic` keeps its raw start); durations are seconds."""

    request_id: str
    status: str  # one of STATUSES
    sent_at: float
    end: float
    type: str = ""  # jepsen_type(status) when written
    process: str = ""
    # what was sent: by which user, in which phase, when it was due (open loop), its limits
    scenario: str = ""
    api: str = "chat"
    phase: str | None = None
    scheduled_at: float | None = None
    sent_monotonic: float | None = None
    max_tokens: int | None = None
    prompt_tokens: int | None = None  # the server's count (usage) where it sent one
    prompt_tokens_client: int | None = None
    # the stream's timings (DESIGN.md's definitions)
    ttft: float | None = None
    itl: tuple[float, ...] = ()
    tpot: float | None = None
    e2e: float | None = None
    # the answer: its tokens, by the server's usage and by the tokenizer, and its text's hash
    output_tokens: int | None = None
    output_tokens_usage: int | None = None
    output_tokens_tokenizer: int | None = None
    output_tokens_source: str | None = None
    output_tokens_difference: int | None = None
    text_sha256: str | None = None
    tokenizer: str | None = None
    # how it ended
    error: str | None = None
    http_status: int | None = None
    events: int = 0  # SSE events received
    deviations: tuple[str, ...] = ()  # where the stream departed from the API's shape
    finish_reason: str | None = None
    retry_after: float | None = None
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def counted(self) -> bool:
        """Whether it counts in service levels (requests the test itself cut do not)."""
        return self.status not in NOT_COUNTED

    def to_line(self) -> dict[str, Any]:
        """The history line."""
        # by hand, not dataclasses.asdict: that deep-copies, 12x slower, and the lines are
        # built in a thread beside the users' event loop, whose clock reads the GIL delays
        value = {name: getattr(self, name) for name in _VALUE_FIELDS}
        value["itl"], value["deviations"] = list(self.itl), list(self.deviations)
        return {"type": self.type or jepsen_type(self.status), "f": "chat",
                "process": self.process, "time": self.end, "value": value}

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> RequestRecord | None:
        """The record of a history line, forgiving of fields of the wrong type (None); None
        when it lacks what every check needs (request id, start, end)."""
        value = line.get("value")
        if not isinstance(value, Mapping):
            return None
        sent, end, rid = json_float(value.get("sent_at")), json_float(line.get("time")), \
            json_str(value.get("request_id"))
        if sent is None or end is None or rid is None:
            return None
        kept: dict[str, Any] = {}
        for f in fields(cls):  # f.type is the annotation's text (`from __future__ import ...`)
            raw = value.get(f.name)
            if f.name in ("request_id", "sent_at", "end", "type", "process") or raw is None:
                continue
            if f.name == "itl":
                kept["itl"] = tuple(g for g in map(json_float, raw) if g is not None) \
                    if isinstance(raw, list) else ()
            elif f.name == "deviations":
                kept["deviations"] = tuple(map(str, raw)) if isinstance(raw, list) else ()
            elif f.type in ("str", "str | None"):
                kept[f.name] = str(raw) if f.type == "str" else json_str(raw)
            elif f.type in ("int", "int | None"):
                number = json_int(raw)
                if number is not None or f.type == "int | None":
                    kept[f.name] = number
            elif f.type == "float | None":
                kept[f.name] = json_float(raw)
        return cls(request_id=rid, sent_at=sent, end=end, type=str(line.get("type")),
                   process=str(line.get("process", "")), **{"status": "", **kept})


# the fields a line keeps in its `value` (the rest are the line's own keys)
_VALUE_FIELDS = tuple(f.name for f in fields(RequestRecord)
                      if f.name not in ("type", "process", "end"))


# -- writers -----------------------------------------------------------------------------------


def new_run_dir(experiment: Experiment, report_dir: Path | None) -> Path:
    """The directory of a new run, `report_dir` (else `report.dir`) / its run id; UsageError
    when it exists and is not empty."""
    root = report_dir or Path(experiment.report.dir)
    run_id = experiment.report.run_id or "{}-{}-{}".format(
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "".join(c if c.isalnum() or c in "-_" else "-" for c in (experiment.name or "run"))[:40],
        experiment.seed)
    run_dir = root / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"report.run_id: the run directory {run_dir} exists and is not empty; "
                         "choose another run_id or remove it")
    return run_dir


def fetch_events(url: str, token: str | None, path: Path) -> int:
    """The target's event backlog (`/admin/events?follow=false`) as events.jsonl."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(url + "/admin/events", params={"follow": "false"}, headers=headers,
                     timeout=10.0)
    if resp.status_code != 200:
        raise TargetError(f"GET {url}/admin/events answered {resp.status_code}")
    events = json_objects(resp.content)
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events),
                    encoding="utf-8")
    return len(events)


def merge_history(run_dir: Path) -> None:
    """Append the harness's own lines (nemesis, probes) to history.jsonl."""
    nemesis = run_dir / NEMESIS_FILE
    history = run_dir / HISTORY_FILE
    text = nemesis.read_text(encoding="utf-8") if nemesis.is_file() else ""
    with open(history, "a", encoding="utf-8") as fh:
        fh.write(text)
    nemesis.unlink(missing_ok=True)


def copy_audit_log(source: Path, run_dir: Path) -> int:
    """Copy the audit log at `source` and its rotated `source.N` files into `run_dir` as
    `audit.jsonl[.N]` (whole files: the hash chain runs through them); how many were copied."""
    copied = 0
    for path in sorted(source.parent.glob(source.name + "*")):
        suffix = path.name[len(source.name):]
        if suffix and not (suffix.startswith(".") and suffix[1:].isdigit()):
            continue
        shutil.copyfile(path, run_dir / (AUDIT_FILE + suffix))
        copied += 1
    return copied
