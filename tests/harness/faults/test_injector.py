"""The injector's schedule, seeded victims, blast radius, abort conditions, reverse-order and
partial reverts, history lines, dry run, and the guard's lifecycle (in-process fake faults)."""

from __future__ import annotations

import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from harness.errors import HarnessError, TargetError, UsageError
from harness.faults import FaultInjector, MemoryRecorder, Step
from harness.faults.base import Effect, Ledger
from harness.faults.heal import KillProcess
from harness.faults.injector import Terminated, exit_143_when_terminated
from harness.target import Target

from .conftest import status

NOWHERE = Target("http://127.0.0.1:9")
WORKERS = ("w1", "w2", "w3")


@dataclass
class FakeFault:
    """Takes one worker (chosen with the RNG among those not busy), logs inject / revert."""

    label: str
    log: list[str] = field(default_factory=list)
    fail: Exception | None = None
    heal_pid: int | None = None

    @property
    def name(self) -> str:
        return f"fake-{self.label}"

    def validate(self, target: Target) -> None:
        if self.label == "invalid":
            raise UsageError("fake-invalid: label must not be `invalid`")

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        if self.heal_pid is not None:
            ledger.note(KillProcess(self.heal_pid, psutil.Process(self.heal_pid).create_time()))
        if self.fail is not None:
            raise self.fail
        free = [w for w in WORKERS if w not in ledger.busy]
        if (ledger.worker_budget is not None and ledger.worker_budget < 1) or not free:
            raise TargetError("blast radius reached")
        victim = rng.choice(free)
        ledger.take(victim)
        self.log.append(f"inject {self.label} {victim}")
        return ledger.effect({"victim": victim})

    def revert(self, target: Target, effect: Effect) -> None:
        self.log.append(f"revert {self.label} {effect.value.get('victim')}")
        from harness.faults.base import revert_effect

        revert_effect(effect)


def _run(steps: list[Step], run_for: float, **kwargs: object) -> tuple[FaultInjector,
                                                                      MemoryRecorder]:
    recorder = MemoryRecorder()
    injector = FaultInjector(NOWHERE, steps, recorder=recorder, guard=False, poll=0.05,
                             **kwargs)  # type: ignore[arg-type]
    injector.run(run_for)
    return injector, recorder


def test_at_for_every_and_history_lines() -> None:
    log: list[str] = []
    fault = FakeFault("a", log)
    injector, rec = _run([Step(fault, at=0.05, duration=0.1, every=0.3)], 0.75)
    assert injector.plan(0.75) == [(0.05, 0), (pytest.approx(0.35), 0), (pytest.approx(0.65), 0)]
    assert [line.split()[0] for line in log] == ["inject", "revert"] * 3
    kinds = [(h["type"], h["f"]) for h in rec.lines]
    assert kinds == [("invoke", "inject"), ("ok", "inject"), ("invoke", "revert"),
                     ("ok", "revert")] * 3
    assert all(h["process"] == "nemesis" and isinstance(h["time"], float) for h in rec.lines)
    assert rec.lines[1]["value"]["victim"] in WORKERS and rec.lines[1]["value"]["for"] == 0.1
    assert injector.result.injected == injector.result.reverted == 3


def test_everything_reverted_in_reverse_order_at_the_end() -> None:
    log: list[str] = []
    steps = [Step(FakeFault(x, log), at=i * 0.05, duration=60) for i, x in enumerate("abc")]
    _run(steps, 0.3)
    assert [line[:8] for line in log] == ["inject a", "inject b", "inject c",
                                          "revert c", "revert b", "revert a"]


def test_seeded_victims_repeat() -> None:
    def victims(seed: int) -> list[str]:
        log: list[str] = []
        _run([Step(FakeFault("a", log), duration=0.02, every=0.05)], 0.3, seed=seed)
        return [line.split()[2] for line in log if line.startswith("inject")]

    assert victims(3) == victims(3)
    assert len({tuple(victims(s)) for s in range(6)}) > 1


def test_blast_radius_limits_workers_at_once() -> None:
    log: list[str] = []
    steps = [Step(FakeFault(x, log), at=i * 0.05, duration=60) for i, x in enumerate("abc")]
    injector, rec = _run(steps, 0.3, blast_radius=2)
    assert [line[:8] for line in log] == ["inject a", "inject b", "revert b", "revert a"]
    fails = [h for h in rec.lines if h["type"] == "fail"]
    assert len(fails) == 1 and "blast radius" in fails[0]["value"]["error"]
    assert injector.result.failed == ["inject fake-c: blast radius reached"]


def test_abort_condition_stops_and_reverts() -> None:
    class AbortAfter:
        def __init__(self) -> None:
            self.calls = 0

        def check(self, target: Target) -> str | None:
            self.calls += 1
            return "target too sick" if self.calls >= 3 else None

    log: list[str] = []
    injector, rec = _run([Step(FakeFault("a", log), duration=60)], 30, abort=[AbortAfter()])
    assert injector.result.aborted == "target too sick"
    assert log == [log[0], log[0].replace("inject", "revert")]
    assert {"type": "info", "f": "abort"}.items() <= rec.lines[2].items()


def test_partial_inject_is_reverted(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        fault = FakeFault("a", fail=TargetError("half done"), heal_pid=bystander.pid)
        injector, rec = _run([Step(fault, duration=60)], 0.2)
        assert status(bystander.pid) == "gone"  # the heal noted before the failure ran
        fail = next(h for h in rec.lines if h["type"] == "fail")
        assert fail["value"]["error"] == "half done" and fail["value"]["partial_heals"] == 1
        assert injector.result.failed == ["inject fake-a: half done"]
    finally:
        bystander.kill()
        bystander.wait()


def test_a_bug_in_a_fault_still_reverts_the_others() -> None:
    log: list[str] = []
    steps = [Step(FakeFault("a", log), duration=60),
             Step(FakeFault("b", log, fail=ZeroDivisionError("bug")), at=0.05, duration=60)]
    with pytest.raises(ZeroDivisionError):
        _run(steps, 1)
    assert [line[:8] for line in log] == ["inject a", "revert a"]


def test_validation_names_the_problem() -> None:
    with pytest.raises(UsageError, match="label must not be"):
        FaultInjector(NOWHERE, [Step(FakeFault("invalid"))]).validate()
    with pytest.raises(UsageError, match=r"schedule\[0\] \(fake-a\): `for` must be"):
        FaultInjector(NOWHERE, [Step(FakeFault("a"), duration=0)]).validate()
    with pytest.raises(UsageError, match="blast_radius"):
        FaultInjector(NOWHERE, [], blast_radius=0).validate()


def test_dry_run_touches_nothing() -> None:
    log: list[str] = []
    rec = MemoryRecorder()
    plan = FaultInjector(NOWHERE, [Step(FakeFault("a", log), at=1, every=10)],
                         recorder=rec).dry_run(25)
    assert plan == [(1, 0), (11, 0), (21, 0)] and log == []
    assert [h["value"]["dry_run"] for h in rec.lines] == [True] * 3


def test_guard_starts_and_goes_with_a_clean_run(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    injector = FaultInjector(NOWHERE, [Step(FakeFault("a"), duration=0.05)],
                             state_path=state, poll=0.05)
    guards: list[int] = []
    original = injector._open

    def spy() -> None:
        original()
        assert injector._guard is not None and state.exists()
        guards.append(injector._guard.pid)

    injector._open = spy  # type: ignore[method-assign]
    injector.run(0.2)
    assert not state.exists() and status(guards[0]) == "gone"


def test_a_terminated_command_exits_143_and_says_what_was_cleaned(
        capsys: pytest.CaptureFixture[str]) -> None:
    def stopped() -> int:
        raise Terminated()

    assert exit_143_when_terminated("run", lambda: 1) == 1
    assert exit_143_when_terminated("explore", stopped) == 143
    assert capsys.readouterr().err == ("llm-chaos explore: terminated (every fault reverted, "
                                       "every process stopped)\n")


def test_faults_by_hand_join_the_running_schedule() -> None:
    """The game-day console's path: a fault injected by hand while the schedule runs is
    recorded like a scheduled one (with `by`), reverted by hand, or at its `for`, or with
    everything else at the end; none is taken when no schedule runs."""
    import threading
    import time

    log: list[str] = []
    recorder = MemoryRecorder()
    injector = FaultInjector(NOWHERE, [Step(FakeFault("planned", log), at=5, duration=1)],
                             recorder=recorder, guard=False)
    with pytest.raises(HarnessError, match="not running"):
        injector.inject_now(Step(FakeFault("early", log), duration=1))
    thread = threading.Thread(target=injector.run, args=(1.5,))
    thread.start()
    deadline = time.monotonic() + 5
    while not injector.running and time.monotonic() < deadline:
        time.sleep(0.01)
    first = injector.inject_now(Step(FakeFault("a", log), duration=60))
    short = injector.inject_now(Step(FakeFault("b", log), duration=0.2))
    kept = injector.inject_now(Step(FakeFault("c", log), duration=60))
    assert {a["inject"] for a in injector.active_faults()} == {first, short, kept}
    with pytest.raises(UsageError, match="invalid"):
        injector.inject_now(Step(FakeFault("invalid", log), duration=1))
    assert injector.revert_now(first) is True
    assert injector.revert_now(first) is False  # once only
    time.sleep(0.5)  # b's `for` ends while the loop waits for the end of the run
    assert [a["inject"] for a in injector.active_faults()] == [kept]
    thread.join(timeout=5)
    assert not injector.running and injector.active == []
    assert [line[:8] for line in log] == ["inject a", "inject b", "inject c", "revert a",
                                          "revert b", "revert c"]
    lines = {(x["type"], x["f"], x["value"]["inject"]): x["value"] for x in recorder.lines}
    assert lines[("ok", "inject", first)]["by"] == "console"
    assert lines[("ok", "revert", first)]["by"] == "console"
    assert "by" not in lines[("ok", "revert", kept)]  # reverted at the end, with the rest
    assert lines[("ok", "inject", kept)]["at"] == pytest.approx(0, abs=0.5)
    with pytest.raises(HarnessError, match="not running"):
        injector.inject_now(Step(FakeFault("late", log), duration=1))
