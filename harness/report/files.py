"""Write the report files of a judged run (each replaced whole, so a re-run is idempotent),
the formats an experiment's `report.formats` names; print its verdicts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from ..checks.runner import CheckRun
from ..errors import UsageError
from .html import report_html
from .junit import junit_xml
from .markdown import summary_md
from .results import phase_figures, results_json

__all__ = ["FORMAT_FILES", "REPORT_FILES", "print_verdicts", "summary_json", "write_reports"]

REPORT_FILES = ("checks.json", "summary.json", "junit.xml", "summary.md", "report.html",
                "results.json")
# The files of each `report.formats` entry. checks.json is always written: it is the run's
# verdicts, which `llm-chaos explore` and the game-day console read back.
FORMAT_FILES = {"json": ("summary.json", "results.json"), "junit": ("junit.xml",),
                "markdown": ("summary.md",), "html": ("report.html",)}


def summary_json(result: CheckRun) -> dict[str, Any]:
    """The short form: overall verdict, exit status, one line per check, phase figures (ours,
    and vLLM bench's names and units beside them)."""
    bench = phase_figures(result)
    counts = {v: sum(1 for c in result.results if c.verdict.value == v)
              for v in ("valid", "invalid", "unknown")}
    return {"run_dir": str(result.run.path), "seed": result.run.seed,
            "verdict": result.verdict.value, "exit_code": result.exit_code, "counts": counts,
            "requests": len(result.run.requests),
            "faults": len(result.timeline.faults) if result.timeline else None,
            "checks": {c.name: {"verdict": c.verdict.value, "summary": c.summary,
                                "figures": dict(c.figures)} for c in result.results},
            "phases": {p: {"requests": s.requests, "error_rate": s.error_rate,
                           "ttft_p95_s": s.latency["ttft"]["p95"],
                           "itl_p95_s": s.latency["itl"]["p95"],
                           "goodput_rps": s.goodput, **bench.get(p, {})}
                       for p, s in result.phases.items()}}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(result: CheckRun, out_dir: Path,
                  formats: Iterable[str] = tuple(FORMAT_FILES)) -> list[Path]:
    """Write checks.json and the files of `formats` (default: every one) into `out_dir`;
    their paths."""
    unknown = sorted(set(formats) - set(FORMAT_FILES))
    if unknown:
        raise UsageError(f"report.formats: unknown {unknown}; choose from {sorted(FORMAT_FILES)}")
    wanted = {"checks.json"} | {name for f in formats for name in FORMAT_FILES[f]}
    texts = {
        "checks.json": lambda: json.dumps(result.to_json(), indent=2, default=str) + "\n",
        "summary.json": lambda: json.dumps(summary_json(result), indent=2, default=str) + "\n",
        "junit.xml": lambda: junit_xml(result),
        "summary.md": lambda: summary_md(result),
        "report.html": lambda: report_html(result),
        "results.json": lambda: json.dumps(results_json(result), indent=2, default=str) + "\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in REPORT_FILES:
        if name in wanted:
            _write(out_dir / name, texts[name]())
            paths.append(out_dir / name)
    return paths


def print_verdicts(result: CheckRun, out_dir: Path, out: TextIO,
                   formats: Iterable[str] = tuple(FORMAT_FILES)) -> list[Path]:
    """Print one line per check, write the reports (`write_reports`) and say where; their
    paths. `llm-chaos check` and every run (`llm-chaos run`, Locust's --chaos-plan, the pytest
    plugin, explore) judge through this."""
    width = max((len(c.name) for c in result.results), default=0)
    for check in result.results:
        print(f"  {check.verdict.value:<8} {check.name:<{width}}  {check.summary}", file=out)
    paths = write_reports(result, out_dir, formats)
    print(f"  wrote {', '.join(p.name for p in paths)} to {out_dir}", file=out)
    return paths
