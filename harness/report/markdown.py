"""summary.md: the verdict table for a pull-request comment."""

from __future__ import annotations

from ..checks.result import Verdict
from ..checks.runner import CheckRun

__all__ = ["ICONS", "fmt", "summary_md"]

ICONS = {Verdict.VALID: "✅ valid", Verdict.INVALID: "❌ invalid", Verdict.UNKNOWN: "❔ unknown"}


def fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    """A number for a table cell ('-' when absent)."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}{unit}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_md(result: CheckRun) -> str:
    """Markdown: overall verdict, one row per check, one row per phase."""
    lines = [f"## llm-chaos check: {ICONS[result.verdict]}", "",
             f"Run `{result.run.path.name}`, seed `{result.run.seed}`, "
             f"{len(result.run.requests)} requests, "
             f"{len(result.timeline.faults) if result.timeline else 0} fault(s).", "",
             "| check | verdict | summary |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {ICONS[c.verdict]} | {_cell(c.summary)} |" for c in result.results]
    if result.phases:
        lines += ["", "| phase | requests | error rate | TTFT p95 | ITL p95 | TPOT p95 | "
                      "e2e p95 | goodput |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for phase, s in result.phases.items():
            if not s.requests and not s.duration:
                continue
            lat = s.latency
            lines.append(
                f"| {phase} | {s.requests} | {fmt(s.error_rate)} | "
                f"{fmt(lat['ttft']['p95'], 's')} | {fmt(lat['itl']['p95'], 's')} | "
                f"{fmt(lat['tpot']['p95'], 's')} | {fmt(lat['e2e']['p95'], 's')} | "
                f"{fmt(s.goodput, '/s')} |")
    return "\n".join(lines) + "\n"
