"""Build small synthetic run directories for the checker and reporter tests."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from harness.audit.chain import GENESIS, canonical, record_hash
from harness.checks.run import read_jsonl

T0 = 1_700_000_000.0


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class RunBuilder:
    """Collects history, telemetry, events and audit lines; `write()` lays them out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history: list[dict[str, Any]] = []
        self.telemetry: list[dict[str, Any]] | None = None
        self.events: list[dict[str, Any]] | None = None
        self.audit: list[dict[str, Any]] | None = None
        self._n = 0

    def request(self, at: float, *, status: str = "ok", ttft: float = 0.05,
                itl: float = 0.01, tokens: int = 10, duration: float | None = None,
                text: str | None = None, rid: str | None = None) -> str:
        self._n += 1
        rid = rid or str(uuid.UUID(int=self._n))
        text = f"answer {self._n}" if text is None else text
        ok = status == "ok"
        e2e = duration if duration is not None else ttft + itl * (tokens - 1)
        jtype = "ok" if ok else ("info" if status in ("timeout", "interrupted") else "fail")
        value = {"request_id": rid, "scenario": "chat_qa", "phase": "baseline",
                 "scheduled_at": T0 + at, "sent_at": T0 + at,
                 "ttft": ttft if ok or status == "truncated" else None,
                 "itl": [itl] * (tokens - 1) if ok else [], "tpot": itl if ok else None,
                 "e2e": e2e, "prompt_tokens": 12, "output_tokens": tokens if ok else None,
                 "output_tokens_source": "usage" if ok else None, "status": status,
                 "error": None if ok else f"{status} happened",
                 "http_status": 200 if ok else 500, "text_sha256": sha(text if ok else ""),
                 "finish_reason": "stop" if ok else None, "deviations": []}
        self.history.append({"type": jtype, "f": "chat", "process": "local",
                             "time": T0 + at + e2e, "value": value})
        return rid

    def load(self, start: float, end: float, rate: float = 10.0, **kw: Any) -> list[str]:
        ids = []
        t = start
        while t < end - 1e-9:
            ids.append(self.request(t, **kw))
            t += 1.0 / rate
        return ids

    def load_around_fault(self, start: float, inject: float, revert: float, end: float,
                          rate: float = 10.0, status: str = "error_frame") -> None:
        """Steady load from `start` to `end` at `rate`, and a fault from `inject` to `revert`
        during which every request fails with `status`."""
        self.load(start, inject, rate=rate)
        self.load(inject, revert, rate=rate, status=status)
        self.load(revert, end, rate=rate)
        self.fault(inject, revert)

    def fault(self, start: float, end: float | None, name: str = "admin-error-rate",
              inject_id: str | None = None, **value: Any) -> None:
        inject_id = inject_id or uuid.uuid4().hex[:12]
        base = {"fault": name, "step": 0, "inject": inject_id}
        self.history.append({"type": "invoke", "f": "inject", "process": "nemesis",
                             "time": T0 + start, "value": base})
        self.history.append({"type": "ok", "f": "inject", "process": "nemesis",
                             "time": T0 + start + 0.01, "value": {**base, **value}})
        if end is not None:
            self.history.append({"type": "invoke", "f": "revert", "process": "nemesis",
                                 "time": T0 + end - 0.01, "value": base})
            self.history.append({"type": "ok", "f": "revert", "process": "nemesis",
                                 "time": T0 + end, "value": base})

    def probe(self, at: float, when: str, ok: bool, name: str = "health") -> None:
        self.history.append({"type": "ok" if ok else "fail", "f": "probe",
                             "process": "probe", "time": T0 + at,
                             "value": {"name": name, "when": when, "ok": ok}})

    def sample(self, at: float, workers: int, ongoing: int | None = None,
               rss_mb: float = 300.0) -> None:
        if self.telemetry is None:
            self.telemetry = []
        self.telemetry.append({
            "time": T0 + at,
            "workers": [{"id": f"w{i}", "state": "live", "rss_bytes": int(rss_mb * 2**20),
                         **({"ongoing": ongoing // workers} if ongoing is not None else {})}
                        for i in range(workers)]})

    def audit_log(self, *, texts: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """A valid audit log for every chat request in the history."""
        records: list[dict[str, Any]] = []
        prev = GENESIS
        for line in sorted((h for h in self.history if h["f"] == "chat"),
                           key=lambda h: h["value"]["sent_at"]):
            v = line["value"]
            for kind in ("accepted", "completed" if v["status"] == "ok" else "failed"):
                rec: dict[str, Any] = {"seq": len(records) + 1, "prev": prev, "type": kind,
                                       "time": v["sent_at"], "request_id": v["request_id"]}
                if kind != "accepted":
                    rec["accepted_seq"] = len(records)
                    rec["output_sha256"] = (texts or {}).get(v["request_id"], v["text_sha256"])
                rec["hash"] = record_hash(rec)
                prev = rec["hash"]
                records.append(rec)
        self.audit = records
        return records

    def write(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "experiment.yaml").write_text(
            "seed: 42\ntarget: {url: 'http://127.0.0.1:8000', adapter: openai}\n")
        _jsonl(self.path / "history.jsonl", self.history)
        if self.telemetry is not None:
            _jsonl(self.path / "telemetry.jsonl", self.telemetry)
        if self.events is not None:
            _jsonl(self.path / "events.jsonl", self.events)
        if self.audit is not None:
            (self.path / "audit.jsonl").write_bytes(
                b"".join(canonical(r) + b"\n" for r in self.audit))
        return self.path


def _jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def slowed_copy(src: Path, dst: Path, factor: float) -> Path:
    """A copy of run directory `src` as a machine `factor` times slower would have recorded
    it: every duration (TTFT, each ITL gap, TPOT, e2e) times `factor`, and every time stretched
    about the run's start, so the same requests arrive `factor` times further apart."""
    skipped: dict[str, int] = {}
    history = read_jsonl(src / "history.jsonl", skipped)
    assert not skipped, skipped
    start = min(line["value"]["sent_at"] if line.get("f") == "chat" else line["time"]
                for line in history)

    def at(t: float) -> float:
        return start + (t - start) * factor

    out: list[dict[str, Any]] = []
    for line in history:
        line = json.loads(json.dumps(line))
        line["time"] = at(line["time"])
        value = line.get("value", {})
        if line.get("f") == "chat":
            for key in ("sent_at", "scheduled_at"):
                value[key] = at(value[key])
            for key in ("ttft", "tpot", "e2e"):
                if value.get(key) is not None:
                    value[key] *= factor
            value["itl"] = [g * factor for g in value.get("itl") or []]
        out.append(line)
    dst.mkdir(parents=True, exist_ok=True)
    _jsonl(dst / "history.jsonl", out)
    for name in ("telemetry.jsonl", "events.jsonl"):
        if (src / name).is_file():
            lines = read_jsonl(src / name, skipped)
            _jsonl(dst / name, [{**x, "time": at(x["time"])} for x in lines])
    if (src / "experiment.yaml").is_file():  # an audit log is hash-chained: not copied
        (dst / "experiment.yaml").write_bytes((src / "experiment.yaml").read_bytes())
    return dst
