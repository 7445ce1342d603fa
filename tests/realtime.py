"""Real-time priority for the processes of timing tests, shared by the tests."""

from __future__ import annotations

import shutil
import subprocess


def realtime_prefix() -> list[str]:
    """`chrt -f 10` where the kernel allows it (root or CAP_SYS_NICE), else nothing.

    Timing tests measure how late a token is emitted or seen; on a small machine shared with
    other busy processes they would otherwise measure the other processes' CPU use instead.
    The kernel's RT throttling keeps such a process from starving the machine.
    """
    chrt = shutil.which("chrt")
    if chrt is None:
        return []
    probe = subprocess.run([chrt, "-f", "10", "true"], capture_output=True, check=False)
    return [chrt, "-f", "10"] if probe.returncode == 0 else []
