"""The observer: samples the target every `interval` seconds into `telemetry.jsonl`.

One line per sample, the shape `harness/checks/run.py` reads:

    {"time": <unix s>, "workers": [{"id", "state", "rss_bytes", "private_bytes", "ongoing",
                                    "pid"}],
     "metrics": {name: value}, "processes": [{"pid", "rss_bytes", "cpu_percent"}],
     "errors": [...]}            # only when part of the sample could not be taken

`metrics` comes from the target's Prometheus `/metrics` (our names or vLLM's); a labelled
series appears under its full name (`llm_chaos_workers{state="live"}`) and summed under its
bare name. A sampling error never stops the observer: it is recorded in that sample.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Observer", "parse_metrics"]

_SKIP_SUFFIXES = ("_bucket", "_created")  # histogram buckets and creation stamps: noise here


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name (with labels if any): value}; labelled series are also
    summed under the bare name."""
    out: dict[str, float] = {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(_SKIP_SUFFIXES) or not math.isfinite(sample.value):
                continue
            if sample.labels:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = float(sample.value)
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
            else:
                out[sample.name] = float(sample.value)
    for name, value in totals.items():
        out.setdefault(name, value)
    return out


class Observer:
    """Samples `target_url`'s workers (admin API), `/metrics` and the workers' processes
    (psutil) into `out_path`, in a thread, every `interval` seconds of `clock` (wall time in
    the records)."""

    def __init__(self, target_url: str, admin_token: str | None, out_path: Path,
                 interval: float = 0.5, clock: Callable[[], float] = time.time,
                 *, router_pid: int | None = None, timeout: float | None = None,
                 sleep: Callable[[float], bool] | None = None,
                 verify: ssl.SSLContext | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be more than 0, not {interval}")
        self.url = target_url.rstrip("/")
        self.admin_token = admin_token
        self.out_path = out_path
        self.interval = interval
        self.clock = clock
        self.router_pid = router_pid
        self.samples = 0
        self.errors = 0
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=timeout or max(interval * 2, 1.0),
                                    verify=verify or True)
        self._procs: dict[int, psutil.Process] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Observer:
        """Start sampling in a daemon thread (the file is opened for appending)."""
        if self._thread is not None:
            raise RuntimeError("the observer is already started")
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.out_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the thread
        self._thread = threading.Thread(target=self._run, args=(fh,), name="llm-chaos-observer",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the sample in progress; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._client.close()

    def __enter__(self) -> Observer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, fh: TextIO) -> None:
        with fh:
            next_at = self.clock()
            while not self._stop.is_set():
                try:
                    record = self.sample()
                except Exception as exc:  # never crash the run: record what went wrong
                    record = {"time": self.clock(), "errors": [f"sample: {exc!r}"]}
                if record.get("errors"):
                    self.errors += 1
                fh.write(json.dumps(record, separators=(",", ":")) + "\n")
                fh.flush()
                self.samples += 1
                # fixed-rate schedule: a slow sample does not shift the ones after it
                next_at += self.interval
                now = self.clock()
                if next_at < now:
                    next_at = now
                self._sleep(next_at - now)

    # -- one sample ------------------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        """Take one sample now (also usable without the thread)."""
        record: dict[str, Any] = {"time": self.clock()}
        errors: list[str] = []
        workers: list[dict[str, Any]] | None = None
        try:
            workers = self._workers()
        except Exception as exc:  # the target may be down: that is what is being observed
            errors.append(f"workers: {exc}")
        if workers is not None:
            record["workers"] = workers
        try:
            record["metrics"] = self._metrics()
        except Exception as exc:
            errors.append(f"metrics: {exc}")
        pids = [int(w["pid"]) for w in workers or () if isinstance(w.get("pid"), int)]
        if self.router_pid is not None:
            pids.insert(0, self.router_pid)
        record["processes"] = self._processes(pids, errors)
        if errors:
            record["errors"] = errors
        return record

    def _workers(self) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        resp = self._client.get(self.url + "/admin/workers", headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"GET /admin/workers answered {resp.status_code}")
        found = resp.json().get("workers")
        if not isinstance(found, list):
            raise RuntimeError("GET /admin/workers: no `workers` list")
        return [{"id": w.get("id"), "state": w.get("state"), "rss_bytes": w.get("rss_bytes"),
                 "private_bytes": w.get("private_bytes"),
                 "ongoing": w.get("ongoing"), "pid": w.get("pid")}
                for w in found if isinstance(w, dict)]

    def _metrics(self) -> dict[str, float]:
        resp = self._client.get(self.url + "/metrics")
        if resp.status_code != 200:
            raise RuntimeError(f"GET /metrics answered {resp.status_code}")
        return parse_metrics(resp.text)

    def _processes(self, pids: list[int], errors: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for pid in dict.fromkeys(pids):
            proc = self._procs.get(pid)
            try:
                if proc is None or not proc.is_running():
                    # cpu_percent is measured between calls on the same Process object
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)
                with proc.oneshot():
                    out.append({"pid": pid, "rss_bytes": proc.memory_info().rss,
                                "cpu_percent": proc.cpu_percent(None)})
            except psutil.Error as exc:
                self._procs.pop(pid, None)
                errors.append(f"process {pid}: {type(exc).__name__}")
        for gone in set(self._procs) - set(pids):
            del self._procs[gone]
        return out
