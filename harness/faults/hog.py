"""A host hog process: `python -m harness.faults hog cpu|memory --seconds S [--mb M]`.

It exits by itself after S seconds (its TTL, enforced where it lives); the harness kills it
earlier on revert, and the guard does if the harness dies.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Hog one CPU or `--mb` MiB of memory until `--seconds` have passed."""
    parser = argparse.ArgumentParser(prog="python -m harness.faults hog")
    parser.add_argument("resource", choices=["cpu", "memory"])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--mb", type=int, default=0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.seconds
    held: list[bytearray] = []
    if args.resource == "memory":
        chunk = 16 * 2**20
        for _ in range(max(1, args.mb * 2**20 // chunk)):
            # filled, not zeroed: untouched zero pages would not count against the RSS
            held.append(bytearray(b"\x5a") * chunk)
        print(f"holding {sum(map(len, held)) // 2**20} MiB", flush=True)
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return 0
    print("burning one CPU", flush=True)
    x = 0
    while time.monotonic() < deadline:
        for i in range(50000):
            x ^= i
    return 0
