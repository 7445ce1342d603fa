"""Timeline plots of a run as PNG bytes (matplotlib's Agg canvas, no pyplot global state),
with fault windows shaded red and recoveries amber."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..checks.run import RequestRecord, RunData
from ..checks.stats import percentile
from ..checks.timeline import Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Plot", "make_plots"]


@dataclass(frozen=True)
class Plot:
    """One rendered figure: a title for the page and its PNG bytes."""

    key: str
    title: str
    png: bytes


def _bins(run: RunData) -> tuple[float, float, int]:
    span = max(run.end - run.start, 1e-3)
    width = max(1.0, span / 60)
    return run.start, width, int(span // width) + 1


def _per_bin(requests: Sequence[RequestRecord], start: float, width: float, n: int,
             key: Callable[[RequestRecord], float]) -> list[list[RequestRecord]]:
    out: list[list[RequestRecord]] = [[] for _ in range(n)]
    for r in requests:
        i = int((key(r) - start) // width)
        if 0 <= i < n:
            out[i].append(r)
    return out


def _render(draw: Callable[[Axes], None], timeline: Timeline | None, origin: float,
            ylabel: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.8), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if timeline is not None:
        for i, f in enumerate(timeline.faults):
            ax.axvspan(f.start - origin, f.end - origin, color="tab:red", alpha=0.15,
                       label="fault" if i == 0 else None)
        for i, r in enumerate(timeline.recoveries):
            if r.end > r.start:
                ax.axvspan(max(r.start, r.fault.end) - origin, r.end - origin,
                           color="tab:orange", alpha=0.12, label="recovery" if i == 0 else None)
    draw(ax)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def make_plots(run: RunData, timeline: Timeline | None) -> list[Plot]:
    """Latency percentiles, throughput, errors; workers and RSS when telemetry has them."""
    start, width, n = _bins(run)
    xs = [(i + 0.5) * width for i in range(n)]
    counted = [r for r in run.requests if r.counted]
    by_start = _per_bin(counted, start, width, n, lambda r: r.sent_at)
    by_end = _per_bin(counted, start, width, n, lambda r: r.end)
    plots: list[Plot] = []

    def latency(ax: Axes) -> None:
        for metric, q, style in (("ttft", 0.5, "-"), ("ttft", 0.95, "-"), ("ttft", 0.99, "-"),
                                 ("e2e", 0.95, "--")):
            ys = [percentile([v for r in b if r.ok
                              for v in [getattr(r, metric)] if v is not None], q)
                  for b in by_start]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], style,
                    label=f"{metric} p{round(q * 100)}", marker=".", markersize=3)

    plots.append(Plot("latency", "Latency percentiles over time (by request start)",
                      _render(latency, timeline, start, "seconds")))

    def throughput(ax: Axes) -> None:
        ax.plot(xs, [sum(1 for r in b if r.ok) / width for b in by_end],
                label="completed/s")
        ax.plot(xs, [len(b) / width for b in by_start], "--",
                label="sent/s")

    plots.append(Plot("throughput", "Throughput", _render(throughput, timeline, start,
                                                          "requests/s")))

    def errors(ax: Axes) -> None:
        statuses = sorted({r.status for r in counted if not r.ok})
        ax.plot(xs, [sum(1 for r in b if not r.ok) / width for b in by_end],
                color="black", label="all errors/s")
        for status in statuses:
            ax.plot(xs, [sum(1 for r in b if r.status == status) / width
                         for b in by_end], label=status)

    plots.append(Plot("errors", "Errors", _render(errors, timeline, start, "failed/s")))
    samples = run.telemetry or ()
    workers = [(s.time - start, s.workers) for s in samples if s.workers is not None]
    if workers:
        def draw_workers(ax: Axes) -> None:
            ax.step([t for t, _ in workers], [w for _, w in workers], where="post",
                    label="workers")

        plots.append(Plot("workers", "Worker count (telemetry)",
                          _render(draw_workers, timeline, start, "workers")))
    rss = [(s.time - start, s.rss_bytes / 2**20) for s in samples if s.rss_bytes is not None]
    if rss:
        def draw_rss(ax: Axes) -> None:
            ax.plot([t for t, _ in rss], [m for _, m in rss], label="RSS")

        plots.append(Plot("rss", "Workers' resident memory (telemetry)",
                          _render(draw_rss, timeline, start, "MiB")))
    return plots
