"""`python -m harness.faults guard|hog ...`: the helper processes of the fault injector (run
through here because the package itself imports `guard`)."""

from __future__ import annotations

import sys

from .guard import main as guard_main
from .hog import main as hog_main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("guard", "hog"):
        print("usage: python -m harness.faults guard|hog ...", file=sys.stderr)
        sys.exit(2)
    sys.exit((guard_main if sys.argv[1] == "guard" else hog_main)(sys.argv[2:]))
