"""A run's figures in the shape the serving ecosystem compares: the field names and units of
vLLM's `vllm bench serve --save-result` JSON (GuideLLM and AIPerf read and print the same
figures), for the whole run (`results.json`) and per phase (`summary.json`).

Units as vLLM's: latencies in milliseconds (`mean_ttft_ms`, `median_itl_ms`, `p99_e2el_ms`,
...), `duration` in seconds, throughputs per second over `duration`. Latency figures are over
the completed requests (ITL: every gap of every stream; TPOT: per request, output tokens after
the first); `request_goodput` counts the completed requests within every per-request bound of
`checks.slo.request` (`--goodput ttft:MS tpot:MS e2el:MS`), and is null when none is set, as
vLLM's is without `--goodput`. Where there is no sample a figure is null (vLLM writes 0).
Per-request lists (vLLM's `ttfts`, `itls`, ...) are left out: history.jsonl holds them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..checks.config import PHASES, RequestSlo
from ..checks.run import RequestRecord
from ..checks.runner import CheckRun
from ..checks.stats import latency_samples, meets_request_slo, percentile
from ..errors import UsageError

__all__ = ["GOODPUT_KEYS", "PERCENTILES", "add_goodput", "bench_figures", "parse_goodput",
           "phase_figures", "results_json"]

PERCENTILES = (50, 90, 95, 99)
# vLLM's name of each latency, and ours
_METRICS = (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"), ("e2el", "e2e"))
# `--goodput KEY:MS` as vLLM spells it, and the per-request bound it sets
GOODPUT_KEYS = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2e"}


def _rate(count: float, duration: float) -> float | None:
    return count / duration if duration > 0 else None


def bench_figures(requests: Sequence[RequestRecord], duration: float,
                  request_slo: RequestSlo | None = None) -> dict[str, Any]:
    """vLLM's summary figures of `requests` (the test's own interruptions left out) over
    `duration` seconds."""
    counted = [r for r in requests if r.counted]
    done = [r for r in counted if r.ok]
    total_in = sum(r.prompt_tokens or 0 for r in done)
    total_out = sum(r.output_tokens if r.output_tokens is not None else len(r.itl) + 1
                    for r in done)
    slo_set = request_slo is not None and any(
        v is not None for v in request_slo.model_dump().values())
    good = sum(1 for r in done if meets_request_slo(r, request_slo)) \
        if request_slo is not None and slo_set else None
    figures: dict[str, Any] = {
        "duration": duration,
        "completed": len(done),
        "failed": len(counted) - len(done),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": _rate(len(done), duration),
        "request_goodput": None if good is None else _rate(good, duration),
        "output_throughput": _rate(total_out, duration),
        "total_token_throughput": _rate(total_in + total_out, duration),
    }
    for name, ours in _METRICS:
        ms = [s * 1000.0 for s in latency_samples(done, ours)]
        figures[f"mean_{name}_ms"] = statistics.fmean(ms) if ms else None
        figures[f"median_{name}_ms"] = percentile(ms, 0.5)
        figures[f"std_{name}_ms"] = statistics.pstdev(ms) if ms else None  # numpy's std
        for p in PERCENTILES:
            figures[f"p{p}_{name}_ms"] = percentile(ms, p / 100)
    return figures


def phase_figures(result: CheckRun) -> dict[str, dict[str, Any]]:
    """`bench_figures` of each phase (a request belongs to the phase it was sent in)."""
    if result.timeline is None:
        return {}
    timeline = result.timeline
    groups: dict[str, list[RequestRecord]] = {p: [] for p in PHASES}
    for r in result.run.requests:
        groups[timeline.phase(r.sent_at)].append(r)
    durations = timeline.durations()
    return {p: bench_figures(groups[p], durations[p], result.config.slo.request)
            for p in PHASES}


def results_json(result: CheckRun) -> dict[str, Any]:
    """The whole run as vLLM's result file: its metadata fields, then `bench_figures`."""
    run, request_slo = result.run, result.config.slo.request
    start, end = (result.timeline.start, result.timeline.end) if result.timeline else (
        run.start, run.end)
    experiment = run.experiment
    load = experiment.get("load")
    load = load if isinstance(load, Mapping) else {}
    target = experiment.get("target")
    target = target if isinstance(target, Mapping) else {}
    requests = run.requests
    rate = load.get("rate")
    slo = {key: round(bound * 1000.0, 3) for key, ours in GOODPUT_KEYS.items()
           if (bound := getattr(request_slo, ours)) is not None}
    return {
        "date": time.strftime("%Y%m%d-%H%M%S", time.localtime(start)) if start else None,
        "backend": "openai-chat",
        "model_id": load.get("model") or target.get("model"),
        "num_prompts": sum(1 for r in requests if r.counted),
        "request_rate": rate if isinstance(rate, int | float) else "inf",
        "max_concurrency": load.get("users"),
        "goodput": slo or None,
        "percentiles": list(PERCENTILES),
        **bench_figures(requests, max(0.0, end - start), request_slo),
    }


def add_goodput(p: argparse.ArgumentParser) -> None:
    """`--goodput KEY:MS ...` as vLLM's bench spells it (`llm-chaos run` and `check`)."""
    p.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS",
                   help="count as goodput the completed requests within these bounds, in "
                        "milliseconds, as vLLM's bench takes them: ttft:500 tpot:50 e2el:3000 "
                        "(sets checks.slo.request; results.json has request_goodput)")


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """`["ttft:500", "e2el:2000"]` (vLLM's `--goodput`, milliseconds) as bounds in seconds by
    our names (`{"ttft": 0.5, "e2e": 2.0}`); UsageError naming a bad item."""
    bounds: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in GOODPUT_KEYS:
            raise UsageError(f"--goodput {item!r}: write KEY:MILLISECONDS with KEY one of "
                             f"{', '.join(GOODPUT_KEYS)} (as vLLM's bench does), e.g. ttft:500")
        try:
            ms = float(value)
        except ValueError:
            raise UsageError(f"--goodput {item!r}: {value!r} is not a number of "
                             "milliseconds") from None
        if not ms > 0:
            raise UsageError(f"--goodput {item!r}: the bound must be more than 0 ms")
        bounds[GOODPUT_KEYS[key]] = ms / 1000.0
    return bounds
