"""`llm-chaos audit verify PATH...`: exit 0 when the log verifies, 1 when it does not, 2 on
bad arguments (a missing file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .verify import verify

__all__ = ["add_parser"]


def _verify(args: argparse.Namespace) -> int:
    report = verify(args.paths)
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(report.summary(), file=sys.stdout)
    return 0 if report.ok else 1


def add_parser(sub: Any) -> None:
    """Register `audit` and `audit verify`."""
    p = sub.add_parser("audit", help="check a target's audit log",
                       description="Audit log tools.")
    audit_sub = p.add_subparsers(dest="audit", metavar="ACTION", required=True)
    v = audit_sub.add_parser(
        "verify", help="check the hash chain, the sequence and one terminal record per request",
        description="Check an audit log (rotated files PATH.1, PATH.2, ... are found next to "
                    "PATH): every record's hash, the sequence and the chain across files, "
                    "exactly one terminal record per accepted request, and torn lines left "
                    "by crashes. Reports totals, requests in doubt, torn lines and the first "
                    "broken record. Exit 0 when the log verifies, 1 when it does not, 2 on "
                    "bad arguments.")
    v.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audit log file(s)")
    v.add_argument("--json", type=Path, metavar="PATH", dest="json_path",
                   help="also write the report as JSON")
    v.set_defaults(run=_verify)
