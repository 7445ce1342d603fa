"""`llm-chaos audit`: check a target's audit log (hash chain, sequence, one terminal record
per accepted request, torn lines, requests in doubt)."""

from __future__ import annotations

from .chain import GENESIS, TERMINAL, canonical, record_hash, text_sha256
from .cli import add_parser
from .verify import Problem, VerifyReport, log_paths, verify

__all__ = ["GENESIS", "TERMINAL", "Problem", "VerifyReport", "add_parser", "canonical",
           "log_paths", "record_hash", "text_sha256", "verify"]
