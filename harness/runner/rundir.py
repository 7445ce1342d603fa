"""The run directory's files that both run entry points write the same way (`llm-chaos run`
and Locust's `--chaos-plan`): its path, the target's events, the harness's history lines."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx

from ..errors import TargetError, UsageError
from ..experiment import Experiment
from ..loadgen.sse import json_objects

__all__ = ["NEMESIS_FILE", "copy_audit_log", "fetch_events", "merge_history", "new_run_dir"]

NEMESIS_FILE = "nemesis.jsonl"


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
    history = run_dir / "history.jsonl"
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
        shutil.copyfile(path, run_dir / ("audit.jsonl" + suffix))
        copied += 1
    return copied
