"""`llm-chaos faults clear`: heal what a crashed run left behind (Jepsen's heal); safe to run
any number of times."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx

from ..errors import TargetError, UsageError
from ..target import Target
from .guard import heal_state_file, process_alive
from .state import default_state_dir, read_state

__all__ = ["add_parser", "clear"]


def add_parser(sub: Any) -> None:
    """Register `faults` (with `faults clear`) on the top-level parser."""
    faults = sub.add_parser("faults", help="fault injection tools (see `faults clear`)",
                            description="Fault injection tools.")
    fsub = faults.add_subparsers(dest="faults_command", metavar="SUBCOMMAND", required=True)
    p = fsub.add_parser(
        "clear", help="heal what a crashed run left: paused processes, hogs, admin faults, "
                      "toxics",
        description="Heal the faults a run left behind: apply the heals recorded in its state "
                    "file(s) (resume paused processes, kill hogs, remove admin faults and "
                    "toxics), clear a target's admin faults, reset a proxy API. Safe to run "
                    "twice. Without --state, every state file of a run that is no longer alive "
                    f"in {default_state_dir()} is healed.")
    p.add_argument("--state", type=Path, action="append", default=None, metavar="FILE",
                   help="a run's fault state file (repeatable)")
    p.add_argument("--target", default=None, metavar="URL",
                   help="also remove every admin fault of this target (router URL)")
    p.add_argument("--admin-token", default=None, help="the target's admin token")
    p.add_argument("--proxy-api", default=None, metavar="URL",
                   help="also reset this Toxiproxy-compatible API (removes all toxics, "
                        "enables all proxies)")
    p.add_argument("--force", action="store_true",
                   help="heal state files of runs that are still alive too")
    p.set_defaults(run=clear)


def clear(args: argparse.Namespace) -> int:
    """Heal from state files, a target's admin API and a proxy API; exit 1 if a heal failed."""
    paths: list[Path] = list(args.state or [])
    if not paths:
        directory = default_state_dir()
        paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
    errors: list[str] = []
    did = 0
    for path in paths:
        if not path.exists():
            print(f"{path}: nothing to heal")
            continue
        owner, _ = read_state(path)
        if not args.force and owner and process_alive(int(owner.get("pid", 0)),
                                                      float(owner.get("create_time", 0.0))):
            if args.state:
                raise UsageError(f"the run that owns {path} (pid {owner['pid']}) is still "
                                 "alive; stop it first, or pass --force")
            print(f"{path}: run pid {owner['pid']} still alive, skipped")
            continue
        done, failed = heal_state_file(path)
        did += len(done)
        for line in done:
            print(f"{path}: {line}")
        errors += [f"{path}: {e}" for e in failed]
    if args.target:
        with Target(args.target, args.admin_token) as target:
            removed = target.clear_faults()
        did += removed
        print(f"{args.target}: removed {removed} admin fault(s)")
    if args.proxy_api:
        try:
            resp = httpx.post(args.proxy_api.rstrip("/") + "/reset", timeout=5.0)
        except httpx.HTTPError as exc:
            raise TargetError(f"POST {args.proxy_api}/reset failed: {exc}") from exc
        if resp.status_code not in (200, 204):
            errors.append(f"{args.proxy_api}/reset answered {resp.status_code}")
        else:
            print(f"{args.proxy_api}: reset (toxics removed, proxies enabled)")
    if not did and not errors and not args.target and not args.proxy_api:
        print("nothing to heal")
    for line in errors:
        print(f"error: {line}")
    return 1 if errors else 0
