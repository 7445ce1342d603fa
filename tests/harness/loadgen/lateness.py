"""How late this machine wakes a process up: `python -m tests.harness.loadgen.lateness SECONDS`.

Sleeps 2 ms at a time for SECONDS and prints, as JSON, the p99 of how much later than asked
each sleep ended (and how many sleeps it rests on). Run beside a timing test at the same
priority, it measures the scheduling noise that test's process met in the same seconds (other
processes, a hypervisor taking the CPU), so a bound on recorded timings can allow for the
machine instead of assuming a quiet one.
"""

from __future__ import annotations

import json
import sys
import time


def main(seconds: float) -> None:
    late = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        time.sleep(0.002)
        late.append(time.perf_counter() - start - 0.002)
    late.sort()
    print(json.dumps({"p99": late[min(len(late) - 1, round(0.99 * (len(late) - 1)))],
                      "samples": len(late)}), flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]))
