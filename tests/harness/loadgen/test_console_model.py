"""What the game-day console computes from a run as it grows: the live timeline's buckets,
fault windows and planned faults, the fleet, the fault kinds a plan allows and the spec an
inject form makes (refused with the field named), and the snapshot the verdicts so far are
judged on (no Locust, no browser)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.checks import load_run
from harness.errors import UsageError
from harness.experiment import AdminFaultSpec, Experiment, ToxicSpec
from harness.loadgen.console_model import (
    JsonlTail,
    LiveTimeline,
    allowed_kinds,
    fault_spec,
    fleet_view,
    planned_faults,
    snapshot_run_dir,
    windows_view,
)

T0 = 1_000_000.0


def _chat(sent: float, ttft: float, status: str = "ok", tokens: int = 10) -> dict[str, Any]:
    return {"type": "ok" if status == "ok" else "fail", "f": "chat", "process": "local",
            "time": T0 + sent + 0.5,
            "value": {"request_id": f"r{sent}-{ttft}", "sent_at": T0 + sent, "ttft": ttft,
                      "itl": [0.01, 0.02], "status": status, "output_tokens": tokens}}


def _experiment(faults: list[dict[str, Any]] | None = None) -> Experiment:
    return Experiment.model_validate({
        "seed": 1, "target": {"url": "http://127.0.0.1:9", "adapter": "reference"},
        "load": {"locustfile": ["scenarios/chat_qa.py"], "duration": 60},
        "faults": faults or []})


def test_timeline_buckets_requests_by_the_time_they_were_sent() -> None:
    timeline = LiveTimeline(T0, width=2.0)
    timeline.add([_chat(0.1, 0.05), _chat(0.5, 0.07), _chat(1.0, 0.06),
                  _chat(2.5, 0.40), _chat(3.0, 0.42), _chat(3.5, 0.0, status="error"),
                  _chat(3.6, 9.9, status="interrupted"),  # the test cut it: not counted
                  {"type": "ok", "f": "inject", "time": T0 + 2, "value": {}}])
    s = timeline.series(T0 + 5.0)
    assert s["t"] == [0.0, 2.0, 4.0]
    assert s["ttft_p50"][:2] == [60.0, 410.0]
    assert s["ttft_p95"][1] == pytest.approx(419.0)
    assert s["itl_p95"][0] == pytest.approx(20.0)
    assert s["error_rate"][:2] == [0.0, pytest.approx(1 / 3, abs=1e-3)]
    # tokens/s by the time requests ended; the bucket still filling shows none yet
    assert s["tokens_per_s"] == [15.0, 10.0, None]
    assert timeline.requests == 6


def test_windows_pair_injects_with_reverts_and_planned_faults_lie_ahead() -> None:
    lines = [
        {"type": "invoke", "f": "inject", "time": T0 + 5, "value": {"inject": "a"}},
        {"type": "ok", "f": "inject", "time": T0 + 5.1,
         "value": {"inject": "a", "fault": "admin-latency", "workers": ["sim-1"],
                   "by": "console"}},
        {"type": "ok", "f": "revert", "time": T0 + 9, "value": {"inject": "a"}},
        {"type": "ok", "f": "inject", "time": T0 + 12,
         "value": {"inject": "b", "fault": "process-kill", "workers": ["sim-2"]}},
    ]
    windows = windows_view(lines, T0, T0 + 14)
    assert windows == [
        {"inject": "a", "fault": "admin-latency", "start": 5.0, "end": 9.0,
         "workers": ["sim-1"], "by": "console"},
        {"inject": "b", "fault": "process-kill", "start": 12.0, "end": None,
         "workers": ["sim-2"], "by": "schedule"}]
    assert planned_faults([(15.0, 0)], ["process-kill"], [5.0], 0.5) == [
        {"fault": "process-kill", "start": 15.5, "end": 20.5}]


def test_fleet_rows_count_restarts_from_the_targets_events() -> None:
    sample = {"time": T0, "workers": [
        {"id": "sim-1", "state": "live", "pid": 11, "private_bytes": 36 * 2**20, "ongoing": 2},
        {"id": "sim-2", "state": "starting", "pid": 12, "rss_bytes": None, "ongoing": 0}]}
    events = [{"seq": 1, "time": T0, "type": "restarted", "worker": "sim-2", "restarts": 1}]
    view = fleet_view(sample, events)
    assert view["workers"] == [
        {"id": "sim-1", "state": "live", "pid": 11, "private_mib": 36.0, "ongoing": 2,
         "restarts": 0},
        {"id": "sim-2", "state": "starting", "pid": 12, "private_mib": None, "ongoing": 0,
         "restarts": 1}]
    assert view["events"][0]["type"] == "restarted"
    assert fleet_view(None, [])["workers"] == []


def test_the_kinds_a_plan_allows() -> None:
    plain = _experiment()
    assert allowed_kinds(plain, None) == []  # no admin token: nothing to drive the target
    kinds = allowed_kinds(plain, "token")
    assert "admin-latency" in kinds and "process-kill" in kinds
    assert not any(k.startswith(("network-", "host-")) for k in kinds)
    named = _experiment([{"kind": "network-latency", "api": "http://127.0.0.1:8474",
                          "proxy": "llm", "attributes": {"latency": 100}, "at": 5},
                         {"kind": "host-cpu-hog", "at": 5}])
    kinds = allowed_kinds(named, None)
    assert "network-sse_cut" in kinds and "network-down" in kinds
    assert "host-cpu-hog" in kinds and "host-memory-hog" not in kinds
    assert "admin-latency" not in kinds


def test_an_inject_form_becomes_a_validated_spec() -> None:
    plain = _experiment()
    spec = fault_spec(plain, "token", {"kind": "admin-latency", "for": 45, "on": "worker",
                                       "count": 1, "workers": "sim-1, sim-2",
                                       "latency_s": 0.3})
    assert isinstance(spec, AdminFaultSpec)
    assert (spec.on, spec.count, spec.workers, spec.duration) == ("worker", 1,
                                                                  ("sim-1", "sim-2"), 45)
    assert spec.params.latency_s == 0.3
    named = _experiment([{"kind": "network-latency", "api": "http://127.0.0.1:8474",
                          "proxy": "edge", "at": 5}])
    toxic = fault_spec(named, None, {"kind": "network-sse_cut", "events": 3})
    assert isinstance(toxic, ToxicSpec)
    assert (toxic.proxy, toxic.attributes) == ("edge", {"events": 3.0})  # where: the plan's


@pytest.mark.parametrize(("form", "message"), [
    ({"kind": "host-cpu-hog"}, "kind: host-cpu-hog is not one this plan allows"),
    ({"kind": "admin-latency", "latency": 3}, "latency: not a field of admin-latency"),
    ({"kind": "admin-latency", "latency_s": -1}, "params.latency_s"),
    ({"kind": "process-kill", "for": 0}, "for"),
    ({"kind": "admin-error_rate", "status": "418"}, "params.status"),
])
def test_a_bad_form_is_refused_naming_the_field(form: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        fault_spec(_experiment(), "token", form)


def test_the_snapshot_holds_the_run_so_far(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.jsonl").write_text(
        json.dumps(_chat(1, 0.05)) + "\n" + '{"type": "ok", "f": "ch')  # a line being written
    (run_dir / "nemesis.jsonl").write_text(json.dumps(
        {"type": "ok", "f": "inject", "time": T0 + 2, "value": {"inject": "a"}}) + "\n")
    (run_dir / "telemetry.jsonl").write_text(json.dumps({"time": T0, "workers": []}) + "\n")
    (run_dir / "audit.jsonl").write_text("{}\n")
    snap = snapshot_run_dir(run_dir, run_dir / "nemesis.jsonl", [{"time": T0, "type": "x"}])
    run = load_run(snap)
    assert len(run.requests) == 1 and [f.f for f in run.faults] == ["inject"]
    assert run.telemetry is not None and run.events is not None
    assert run.audit_paths == ()  # mid-run, open requests would look lost: judged at the end
    assert run.skipped_lines == {}


def test_the_tail_reads_only_whole_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []
    path.write_text('{"a": 1}\n{"b"')
    assert tail.read() == [{"a": 1}]
    with open(path, "a") as fh:
        fh.write(': 2}\nnot json\n')
    assert tail.read() == [{"b": 2}]
