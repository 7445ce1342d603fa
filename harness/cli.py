"""`llm-chaos`: the harness's command line. Every subcommand has --help."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from .errors import HarnessError

__all__ = ["main"]


_TARGET_COMMANDS = ("worker", "serve")
# what the [target] extra adds (see pyproject.toml)
TARGET_MODULES = ("torch", "transformers", "gguf", "accelerate", "fastapi", "httptools",
                  "aiohttp")


def _target(command: str, argv: list[str]) -> int:
    # These belong to the reference target (targets/ never imports the harness): hand the
    # process over to it, so the PID a caller started is the server's own.
    missing = [name for name in TARGET_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"llm-chaos {command}: the reference target needs {', '.join(missing)}, which "
              "this installation lacks: pip install 'llm-chaos-harness[target]'",
              file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, "-m", "targets.reference", command, *argv])


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommands register themselves here."""
    parser = argparse.ArgumentParser(
        prog="llm-chaos",
        description="Chaos and load testing for LLM deployments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("worker", add_help=False,
                   help="run one reference worker (see `llm-chaos worker --help`)")
    sub.add_parser("serve", add_help=False,
                   help="run the reference target: a router and its workers "
                        "(see `llm-chaos serve --help`)")
    from .audit import add_parser as add_audit
    from .bench import add_parser as add_bench
    from .checks import add_parser as add_check
    from .demo import add_parser as add_demo
    from .explore import add_parser as add_explore
    from .faults.cli import add_parser as add_faults
    from .proxy.cli import add_parser as add_proxy
    from .runner.cli import add_parser as add_run

    add_audit(sub)
    add_bench(sub)
    add_demo(sub)
    add_proxy(sub)
    add_faults(sub)
    add_check(sub)
    add_run(sub)
    add_explore(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llm-chaos` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _TARGET_COMMANDS:
        return _target(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        code: int = args.run(args)
    except HarnessError as exc:
        print(f"llm-chaos: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llm-chaos: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
