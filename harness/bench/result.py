"""What a benchmark produces: figures, goals judged on them, and tables to print.

Every benchmark returns one `BenchResult`; the runner adds the machine it ran on, prints its
tables and the goals, and writes `to_json()` when asked. A figure that could not be measured is
kept with value None, so the JSON always names every figure, and a goal on it is reported as not
met and not measured.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BenchResult", "Figure", "Goal", "Table", "render_table"]

Cell = str | int | float | None

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Figure:
    """One measured number (None when the part that measures it did not run)."""

    name: str
    value: float | None
    unit: str
    description: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit,
                "description": self.description}


@dataclass(frozen=True)
class Goal:
    """A promise about one figure: `figure op target`, e.g. `ours.scaling >= 6`."""

    name: str
    figure: str
    op: str
    target: float
    description: str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"goal {self.name!r}: op must be one of {', '.join(_OPS)}")

    @property
    def expression(self) -> str:
        return f"{self.figure} {self.op} {self.target:g}"

    def met(self, value: float | None) -> bool:
        """Whether `value` keeps the promise; an unmeasured figure never does."""
        return value is not None and _OPS[self.op](value, self.target)


@dataclass(frozen=True)
class Table:
    """Rows to print under a title; the first column is a label, the rest are figures."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns),
                "rows": [list(r) for r in self.rows]}


@dataclass(frozen=True)
class BenchResult:
    """Everything one benchmark run measured, and what it was configured with."""

    bench: str
    config: dict[str, Any]
    figures: tuple[Figure, ...]
    goals: tuple[Goal, ...]
    tables: tuple[Table, ...]
    notes: tuple[str, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # raw samples behind the figures
    machine: dict[str, Any] = field(default_factory=dict)  # harness.machine.describe()

    def __post_init__(self) -> None:
        names = [f.name for f in self.figures]
        if len(set(names)) != len(names):
            raise ValueError(f"bench {self.bench}: duplicate figure names")
        for goal in self.goals:
            if goal.figure not in names:
                raise ValueError(f"goal {goal.name!r} refers to unknown figure {goal.figure!r}")

    def value(self, name: str) -> float | None:
        """The value of the figure called `name`."""
        return next(f.value for f in self.figures if f.name == name)

    def goal_rows(self) -> list[dict[str, Any]]:
        """Each goal with the figure's value and whether it was measured and met."""
        rows = []
        for goal in self.goals:
            value = self.value(goal.figure)
            rows.append({"name": goal.name, "figure": goal.figure,
                         "expression": goal.expression, "description": goal.description,
                         "value": value, "measured": value is not None,
                         "met": goal.met(value)})
        return rows

    def goals_table(self) -> Table:
        rows: list[tuple[Cell, ...]] = []
        for row in self.goal_rows():
            verdict = "yes" if row["met"] else ("not measured" if not row["measured"] else "NO")
            rows.append((row["name"], row["description"], row["value"], row["expression"],
                         verdict))
        return Table("goals", ("goal", "what", "figure", "expression", "met"), tuple(rows))

    def to_json(self) -> dict[str, Any]:
        goals = self.goal_rows()
        return {
            "bench": self.bench,
            "config": self.config,
            "machine": self.machine,
            "environment": self.environment,
            "figures": [f.to_json() for f in self.figures],
            "goals": goals,
            "all_goals_met": all(g["met"] for g in goals),
            "tables": [t.to_json() for t in self.tables],
            "notes": list(self.notes),
            "details": self.details,
        }


def _cell(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def render_table(table: Table) -> str:
    """Plain aligned text: labels left-aligned, numbers right-aligned."""
    cells = [[_cell(c) for c in row] for row in table.rows]
    widths = [len(c) for c in table.columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in table.rows)
               and any(r[i] is not None for r in table.rows)
               for i in range(len(table.columns))]

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if numeric[i] else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(parts).rstrip()

    out = [table.title, line(table.columns), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)
