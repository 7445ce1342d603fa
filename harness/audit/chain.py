"""The audit log's hash chain, as the verifier computes it.

The reference target's writer (`targets/reference/audit.py`) holds the same rule; the target
never imports the harness, so the two small functions live in both places and a test checks
they agree record for record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["GENESIS", "TERMINAL", "canonical", "record_hash", "text_sha256"]

GENESIS = "0" * 64
TERMINAL = ("completed", "failed", "rejected", "cancelled", "timeout")


def canonical(record: Mapping[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, ASCII only."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the record's canonical JSON without its own `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})
                          ).hexdigest()


def text_sha256(text: str) -> str:
    """SHA-256 (hex) of the exact UTF-8 bytes of `text` (what a client compares)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
