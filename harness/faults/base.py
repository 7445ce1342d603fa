"""The seam every fault implements, and the ledger an inject writes its heals into."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import TargetError, UsageError
from ..target import Target
from .heal import Heal

__all__ = ["Effect", "Fault", "HealReport", "Ledger", "one_of", "revert_effect", "revert_heals"]


def one_of(what: str, value: str, choices: Iterable[str], also: str = "") -> None:
    """A fault's `validate`: UsageError naming the choices unless `value` is one of them."""
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"{what} {value!r}: use one of {', '.join(choices)}{also}")


@dataclass(frozen=True)
class Effect:
    """What one inject did: a JSON record for the history, and the heals that undo it."""

    fault: str
    value: dict[str, Any]
    heals: tuple[Heal, ...] = ()
    workers: frozenset[str] = frozenset()
    entry_ids: tuple[str, ...] = ()


class Ledger:
    """Handed to `inject`: the time-to-live of the effect, the victims it may still take, and
    `note()`, which records a heal *before* the action it undoes (so a crash between the two
    can only leave something healed twice, never something not healed)."""

    def __init__(self, fault: str, ttl: float, *, worker_budget: int | None = None,
                 busy: frozenset[str] = frozenset(),
                 on_note: Callable[[Heal], str] | None = None) -> None:
        self.fault = fault
        self.ttl = ttl
        self.worker_budget = worker_budget
        self.busy = busy
        self.heals: list[Heal] = []
        self.entry_ids: list[str] = []
        self.workers: set[str] = set()
        self._on_note = on_note

    def note(self, heal: Heal) -> None:
        """Record the undo of the action about to happen."""
        self.heals.append(heal)
        if self._on_note is not None:
            self.entry_ids.append(self._on_note(heal))

    def take(self, worker_id: str) -> None:
        """Count a worker as affected (for the blast radius)."""
        self.workers.add(worker_id)

    def effect(self, value: dict[str, Any] | None = None) -> Effect:
        """The effect of everything noted so far (also what a failed inject leaves)."""
        return Effect(self.fault, dict(value or {}), tuple(self.heals), frozenset(self.workers),
                      tuple(self.entry_ids))


class Fault(Protocol):
    """A fault is configuration: checked before the run, injected, reverted exactly."""

    @property
    def name(self) -> str:
        """A short name for records, e.g. `process-pause`."""
        ...

    def validate(self, target: Target) -> None:
        """Raise UsageError (saying what to change) if this fault cannot run on `target`."""
        ...

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        """Act on the target, noting each heal in `ledger` first; return the effect."""
        ...

    def revert(self, target: Target, effect: Effect) -> None:
        """Undo `effect`; idempotent, and safe for the partial effect of a failed inject."""
        ...


@dataclass
class HealReport:
    """What reverting a list of heals did: one line per heal, and the errors."""

    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def revert_heals(heals: tuple[Heal, ...] | list[Heal]) -> HealReport:
    """Apply heals in reverse order; every one is tried even if an earlier one fails."""
    report = HealReport()
    for heal in reversed(list(heals)):
        try:
            report.done.append(heal.apply())
        except Exception as exc:  # reported; the other heals must still run
            report.errors.append(f"{heal.kind}: {exc}")
    return report


def revert_effect(effect: Effect) -> list[str]:
    """The common revert: apply the effect's heals; TargetError naming every one that failed."""
    report = revert_heals(effect.heals)
    if report.errors:
        raise TargetError(f"reverting {effect.fault} failed: " + "; ".join(report.errors))
    return report.done
