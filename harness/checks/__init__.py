"""The checker: pure functions over a recorded run directory, each answering valid, invalid or
unknown (merged invalid > unknown > valid); `llm-chaos check RUN_DIR` re-judges a run offline."""

from __future__ import annotations

from .cli import add_parser
from .config import CheckConfig, load_config
from .result import CheckResult, Verdict, merge
from .run import RunData, load_run
from .runner import CHECKS, Check, CheckRun, Context, exit_code, run_checks
from .timeline import Timeline, build_timeline

__all__ = ["CHECKS", "Check", "CheckConfig", "CheckResult", "CheckRun", "Context", "RunData",
           "Timeline", "Verdict", "add_parser", "build_timeline", "exit_code", "load_config",
           "load_run", "merge", "run_checks"]
