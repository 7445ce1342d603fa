"""Write every report file of a judged run (each replaced whole, so a re-run is idempotent)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..checks.runner import CheckRun
from .html import report_html
from .junit import junit_xml
from .markdown import summary_md
from .results import phase_figures, results_json

__all__ = ["REPORT_FILES", "summary_json", "write_reports"]

REPORT_FILES = ("checks.json", "summary.json", "junit.xml", "summary.md", "report.html",
                "results.json")


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


def write_reports(result: CheckRun, out_dir: Path) -> list[Path]:
    """Write every report file into `out_dir`; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "checks.json": json.dumps(result.to_json(), indent=2, default=str) + "\n",
        "summary.json": json.dumps(summary_json(result), indent=2, default=str) + "\n",
        "junit.xml": junit_xml(result),
        "summary.md": summary_md(result),
        "report.html": report_html(result),
        "results.json": json.dumps(results_json(result), indent=2, default=str) + "\n",
    }
    paths = []
    for name in REPORT_FILES:
        _write(out_dir / name, texts[name])
        paths.append(out_dir / name)
    return paths
