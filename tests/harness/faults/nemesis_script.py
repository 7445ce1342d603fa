"""A harness run for the survival tests: one fault of each local family, held for a minute.

Usage: python -m tests.harness.faults.nemesis_script URL TOKEN TOXIPROXY_API RUN_DIR [FOR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.faults import (
    AdminFault,
    CpuHog,
    FaultInjector,
    JsonlRecorder,
    MemoryHog,
    ProcessFault,
    Step,
    Terminated,
    ToxicFault,
    Victims,
)
from harness.target import Target


def main() -> int:
    url, token, toxiproxy, run_dir = sys.argv[1:5]
    hold = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    steps = [
        Step(AdminFault("latency", params={"latency_s": 0.3}), duration=hold),
        Step(AdminFault("memory_leak", on="worker", params={"mb_per_s": 20, "cap_mb": 20}),
             duration=hold),
        Step(CpuHog(), duration=hold),
        Step(MemoryHog(mb=16), duration=hold),
        Step(ToxicFault(toxiproxy, "llm", "latency", {"latency": 100}), duration=hold),
        # last, so it is reverted first: the router's fault removal waits 5 s per paused worker
        Step(ProcessFault("pause", Victims(count=1)), duration=hold),
    ]
    with Target(url, token) as target:
        injector = FaultInjector(target, steps, seed=7, blast_radius=2,
                                 recorder=JsonlRecorder(Path(run_dir) / "history.jsonl"),
                                 state_path=Path(run_dir) / "faults.json")
        try:
            injector.run(120)
        except KeyboardInterrupt:
            return 130
        except Terminated:
            return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
