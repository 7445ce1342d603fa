"""What a check returns: a verdict, one line for people, and the evidence behind it.

Verdicts are Jepsen's three values, merged `invalid > unknown > valid`: one broken promise
makes the run invalid, and anything the checks could not decide keeps it from being valid.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CheckResult", "Verdict", "merge"]


class Verdict(enum.StrEnum):
    """valid / invalid / unknown (Jepsen's `:valid? true | false | :unknown`)."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        return {"valid": 0, "unknown": 1, "invalid": 2}[self.value]


def merge(verdicts: Iterable[Verdict]) -> Verdict:
    """invalid > unknown > valid; nothing to judge is valid (an empty conjunction)."""
    worst = Verdict.VALID
    for verdict in verdicts:
        if verdict.rank > worst.rank:
            worst = verdict
    return worst


Figure = float | int | str | None


@dataclass(frozen=True)
class CheckResult:
    """One check's answer: `evidence` is JSON-ready detail, `figures` the headline numbers."""

    name: str
    verdict: Verdict
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    figures: Mapping[str, Figure] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict.value, "summary": self.summary,
                "figures": dict(self.figures), "evidence": dict(self.evidence)}
