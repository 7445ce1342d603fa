"""report.html: one self-contained page (inline CSS, plots as base64 PNG, no external URL)."""

from __future__ import annotations

import base64
import html
import json

from ..checks.result import Verdict
from ..checks.runner import CheckRun
from .markdown import fmt
from .plots import Plot, make_plots

__all__ = ["report_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}
.valid{color:#0a7d20;font-weight:bold}.invalid{color:#b00020;font-weight:bold}
.unknown{color:#946200;font-weight:bold}pre{background:#f7f7f7;padding:8px;overflow:auto;
max-height:30em;font-size:12px}img{max-width:100%;border:1px solid #eee}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _verdict(v: Verdict) -> str:
    return f'<span class="{v.value}">{v.value}</span>'


def _plot(p: Plot) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    return (f'<figure id="plot-{_e(p.key)}"><figcaption>{_e(p.title)}</figcaption>'
            f'<img alt="{_e(p.title)}" src="data:image/png;base64,{data}"></figure>')


def report_html(result: CheckRun) -> str:
    """The whole page for `result`."""
    run = result.run
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>llm-chaos report: {_e(run.path.name)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>llm-chaos report: {_verdict(result.verdict)}</h1>",
             f"<p>Run <code>{_e(run.path.name)}</code>, seed <code>{_e(run.seed)}</code>, "
             f"{len(run.requests)} requests, exit status {result.exit_code}.</p>"]
    if result.timeline_error:
        parts.append(f"<p class=\"unknown\">Timeline not built: {_e(result.timeline_error)}</p>")
    parts += ["<h2>Verdicts</h2>", "<table><tr><th>check</th><th>verdict</th><th>summary</th>"
              "</tr>"]
    parts += [f'<tr><td><a href="#check-{_e(c.name)}">{_e(c.name)}</a></td>'
              f"<td>{_verdict(c.verdict)}</td><td>{_e(c.summary)}</td></tr>"
              for c in result.results]
    parts.append("</table>")
    if result.phases:
        parts += ["<h2>Per phase</h2>", "<table><tr><th>phase</th><th>duration</th>"
                  "<th>requests</th><th>failed</th><th>error rate</th>"
                  + "".join(f"<th>{m} p50 / p95 / p99</th>" for m in ("TTFT", "ITL", "TPOT",
                                                                     "e2e"))
                  + "<th>throughput</th><th>goodput</th></tr>"]
        for phase, s in result.phases.items():
            cells = [phase, fmt(s.duration, "s"), str(s.requests), str(s.failed),
                     fmt(s.error_rate)]
            for m in ("ttft", "itl", "tpot", "e2e"):
                q = s.latency[m]
                cells.append(" / ".join(fmt(q[k], "s") for k in ("p50", "p95", "p99")))
            cells += [fmt(s.throughput, "/s"), fmt(s.goodput, "/s")]
            parts.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    if result.timeline is not None and result.timeline.faults:
        parts += ["<h2>Faults</h2>", "<table><tr><th>fault</th><th>start</th><th>end</th>"
                  "<th>time to recover</th></tr>"]
        for r in result.timeline.recoveries:
            f = r.fault
            parts.append(f"<tr><td>{_e(f.fault)}</td><td>t+{f.start - run.start:.2f}s</td>"
                         f"<td>t+{f.end - run.start:.2f}s</td>"
                         f"<td>{_e(fmt(r.time_to_recover, 's'))}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Timeline</h2>")
    parts += [_plot(p) for p in make_plots(run, result.timeline)]
    parts.append("<h2>Evidence</h2>")
    for c in result.results:
        parts.append(f'<h3 id="check-{_e(c.name)}">{_e(c.name)}: {_verdict(c.verdict)}</h3>'
                     f"<p>{_e(c.summary)}</p>")
        if c.figures:
            parts.append("<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                                             for k, v in c.figures.items()) + "</table>")
        parts.append("<details><summary>evidence</summary><pre>"
                     + _e(json.dumps(c.evidence, indent=2, default=str)) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
