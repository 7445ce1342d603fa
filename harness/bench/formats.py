"""`llm-chaos bench formats`: the worker's weight formats against this machine's limit.

A decode step of one stream reads every weight once, so on a CPU its speed is bound by memory
bandwidth over the bytes of weights a token reads. This benchmark measures the bandwidth (a
large copy), starts one worker per format (fp32, bf16, fp16w: float16 weights computed in
float32, what `--dtype auto` picks on CPUs with AVX2; weight-only int8 and int4, and
`--quantize auto`: int4 beside dense weights, whichever the worker measured faster at a batch
size; one at a time), reads from its /debug/engine how many bytes of weights a token reads,
and measures it over HTTP at several concurrency levels (streaming chats, greedy,
`ignore_eos`). One stream's tokens/s is then reported as a fraction of its format's bound
and of the float32 bound.

Many streams share each weight read, so a step of many is bound by arithmetic instead: the
benchmark also times torch's matrix product in float32 and bfloat16 and reports each format's
tokens/s at the most streams against that compute bound, and its gain from one stream to 16
beside the gain of an engine at both bounds (this machine's arithmetic per byte over the
format's). The formats' greedy fidelity against float32 (free-running and teacher-forced)
comes from `python -m targets.reference fidelity` in its own process: the harness reaches
the target only over HTTP and process control.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from ..errors import TargetError, UsageError
from ..launcher import start_worker
from .engine import PROMPTS
from .limits import (
    Limits,
    compute_bound,
    machine_figures,
    measure_limits,
    rates_text,
    scaling_at_bounds,
    weight_counts,
)
from .result import BenchResult, Figure, Goal, Table
from .runner import Benchmark, Progress, add_model_arguments, parse_levels
from .streams import BatchTiming, measure_batch

__all__ = ["BENCHMARK", "FORMATS"]

FORMATS = {"fp32": ["--dtype", "float32"], "bf16": ["--dtype", "bfloat16"],
           "fp16w": ["--quantize", "fp16w"], "int8": ["--quantize", "int8"],
           "int4": ["--quantize", "int4"], "auto": ["--quantize", "auto"]}
BOUND_GOAL = 0.8  # one stream's tokens/s over its format's weight-bandwidth bound
FP32_BOUND_GOAL = 1.6  # the fastest format's one stream over the float32 bound
SCALING_STREAMS = 16  # issue 17's scaling figure: 16 streams over one
TEACHER_FORCED_GOAL = 0.99
FREE_RUNNING_GOAL = 0.90


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `bench formats`."""
    add_model_arguments(p, "smollm2 (default) or a local Hugging Face folder")
    p.add_argument("--formats", default="fp32,bf16,fp16w,int8,int4,auto",
                   help="comma-separated, from fp32, bf16, fp16w (float16 weights computed in "
                        "float32), int8, int4, auto (int4 beside dense weights in the "
                        "fastest dense dtype, chosen per batch size; default all six; fp32 is "
                        "every bound's reference and always runs)")
    p.add_argument("--streams", type=parse_levels, default=[1, 4, 16, 32], metavar="N,N,...",
                   help="concurrent streams to measure (default 1,4,16,32)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed batches per level (default 2, 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="one round per level")
    p.add_argument("--skip-fidelity", action="store_true",
                   help="leave out the greedy agreement with float32 (reported as not measured)")
    p.add_argument("--ready-timeout", type=float, default=300.0,
                   help="seconds a worker may take to become ready (default 300)")


@dataclass(frozen=True)
class _FormatRun:
    """One worker in one format: weights it reports, its memory, its timed batches."""

    weights_bytes: int | None
    rss_bytes: int
    ready_s: float
    batches: dict[int, list[BatchTiming]]
    packed_rows: int | None = None  # quantized: steps of up to this many run packed
    macs: int | None = None  # multiply-adds of weights a token costs
    dtype: str | None = None  # what its steps compute in (/debug/engine's dtype)


def _formats(text: str) -> list[str]:
    asked = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in asked if f not in FORMATS]
    if unknown:
        raise UsageError(f"--formats {text!r}: {', '.join(unknown)} unknown; expected "
                         f"{', '.join(FORMATS)}")
    return ["fp32", *[f for f in FORMATS if f in asked and f != "fp32"]]


def _weights(url: str) -> tuple[dict[str, Any], str | None]:
    """The worker's weights as its /debug/engine reports them (bytes_per_token,
    macs_per_token, and where quantized packed_rows: the largest step its calibration gave
    the packed kernels), and the dtype its steps compute in."""
    try:
        engine = httpx.get(url + "/debug/engine", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TargetError(f"{url}/debug/engine did not answer: {exc!r}") from exc
    weights = engine.get("weights") if isinstance(engine, dict) else None
    dtype = engine.get("dtype") if isinstance(engine, dict) else None
    return (weights if isinstance(weights, dict) else {},
            dtype if isinstance(dtype, str) else None)


def _run_format(args: argparse.Namespace, fmt: str, rounds: int, logs: Path,
                progress: Progress) -> _FormatRun:
    levels: list[int] = args.streams
    extra = ["--device", "cpu", *FORMATS[fmt]]
    if max(levels) > 32:
        extra += ["--max-num-seqs", str(max(levels))]
    with start_worker(args.model, args=extra, log_dir=logs) as worker:
        ready = worker.wait_ready(timeout=args.ready_timeout)
        # ready only once it has timed its kernels: packed_rows is final here
        described, dtype = _weights(worker.url)
        weights, macs = weight_counts(described)
        packed = described.get("packed_rows")
        name = httpx.get(worker.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        size = f"{weights / 1e6:.0f} MB of weights a token" if weights else "weights unknown"
        progress(f"{fmt} worker ready in {ready:.1f} s (pid {worker.pid}, {size})")
        if packed is not None:
            progress(f"{fmt}: steps of up to {packed} sequence(s) run the packed kernels, "
                     "larger ones the dense (int8: converted) weights")
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(max(levels))]
        measure_batch(worker.url, name, prompts, min(8, args.max_tokens))  # warm-up
        batches: dict[int, list[BatchTiming]] = {}
        for level in levels:
            batches[level] = []
            for r in range(rounds):
                batch = measure_batch(worker.url, name, prompts[:level], args.max_tokens)
                batches[level].append(batch)
                progress(f"{fmt} at {level} stream(s), round {r + 1}/{rounds}: "
                         f"{batch.tokens_per_s:.1f} tokens/s")
        rss = psutil.Process(worker.pid).memory_info().rss
    return _FormatRun(weights, rss, ready, batches, packed, macs, dtype)


def _fidelity(args: argparse.Namespace, formats: list[str], logs: Path,
              progress: Progress) -> dict[str, dict[str, float]]:
    others = [f for f in formats if f != "fp32"]
    if args.skip_fidelity or not others:
        return {}
    prompts, out = logs / "prompts.json", logs / "fidelity.json"
    prompts.write_text(json.dumps(list(PROMPTS)))
    cmd = [sys.executable, "-m", "targets.reference", "fidelity", "--model", args.model,
           "--formats", ",".join(others), "--prompts", str(prompts),
           "--max-tokens", str(args.max_tokens), "--json", str(out)]
    progress(f"greedy fidelity of {', '.join(others)} against fp32 on {len(PROMPTS)} prompts "
             "(own process)")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TargetError(f"the fidelity run failed ({done.returncode}): "
                          f"{done.stderr.strip()[-600:]}")
    for line in done.stdout.strip().splitlines():
        progress(line)
    return {row["format"]: row for row in json.loads(out.read_text())}


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def measure(args: argparse.Namespace, progress: Progress) -> BenchResult:
    formats = _formats(args.formats)
    rounds = args.rounds or (1 if args.quick else 2)
    if rounds < 1 or args.max_tokens < 1:
        raise UsageError("--rounds and --max-tokens must be 1 or more")
    limits = measure_limits(progress)
    runs: dict[str, _FormatRun] = {}
    with tempfile.TemporaryDirectory(prefix="llm-chaos-bench-") as tmp:
        logs = Path(tmp)
        for fmt in formats:
            runs[fmt] = _run_format(args, fmt, rounds, logs, progress)
        fidelity = _fidelity(args, formats, logs, progress)
    return _result(args, formats, rounds, limits, runs, fidelity)


def _result(args: argparse.Namespace, formats: list[str], rounds: int, limits: Limits,
            runs: dict[str, _FormatRun], fidelity: dict[str, dict[str, float]]) -> BenchResult:
    levels: list[int] = args.streams
    low, top = levels[0], levels[-1]
    many = max((level for level in levels if level <= SCALING_STREAMS), default=top)
    bandwidth, read_rate, rates = limits.copy, limits.read, limits.rates
    figures = machine_figures(limits, ("float32", "bfloat16"))
    limit_rows = []
    fp32_bytes = runs["fp32"].weights_bytes
    fp32_bound = bandwidth / fp32_bytes if bandwidth and fp32_bytes else None
    goals = []
    rows = []
    for fmt in formats:
        run = runs[fmt]
        bound = bandwidth / run.weights_bytes if bandwidth and run.weights_bytes else None
        tps = {level: _median([b.tokens_per_s for b in run.batches[level]])
               for level in levels}
        one = tps[low]
        of_read = one * run.weights_bytes / read_rate if one and run.weights_bytes and \
            read_rate else None
        figures += [
            Figure(f"{fmt}.weight_bytes_per_token", run.weights_bytes, "bytes",
                   f"{fmt}: bytes of weights one decode step of one stream reads"),
            Figure(f"{fmt}.rss_bytes", run.rss_bytes, "bytes",
                   f"{fmt}: worker resident memory after the run"),
            Figure(f"{fmt}.bound_tokens_per_s", bound, "tokens/s",
                   f"{fmt}: bandwidth / bytes of weights a token reads"),
            Figure(f"{fmt}.fraction_of_bound", one / bound if one and bound else None,
                   "fraction", f"{fmt}: {low} stream(s) tokens/s over its own bound"),
            Figure(f"{fmt}.vs_fp32_bound", one / fp32_bound if one and fp32_bound else None,
                   "x", f"{fmt}: {low} stream(s) tokens/s over the float32 bound"),
            Figure(f"{fmt}.fraction_of_read_bound", of_read, "fraction",
                   f"{fmt}: {low} stream(s) tokens/s over read bandwidth / weight bytes (what "
                   "the threads can read, not issue 17's copy bound)"),
        ]
        rate = rates.get(run.dtype or "")
        ceiling = compute_bound(rate, run.macs)
        at_top, at_many = tps[top], tps[many]
        of_ceiling = at_top / ceiling if at_top and ceiling else None
        scaling = at_many / one if one and at_many and many != low else None
        most, most_read = (
            (scaling_at_bounds(many, bw, run.weights_bytes, rate, run.macs, low)
             if many != low else None) for bw in (bandwidth, read_rate))
        figures += [
            Figure(f"{fmt}.macs_per_token", run.macs, "multiply-adds",
                   f"{fmt}: multiply-adds of weights a token costs (projections and head)"),
            Figure(f"{fmt}.compute_bound_tokens_per_s", ceiling, "tokens/s",
                   f"{fmt}: the {run.dtype} matmul rate / 2 operations a multiply-add: what a "
                   "step of many streams can reach at most"),
            Figure(f"{fmt}.fraction_of_compute_bound", of_ceiling, "fraction",
                   f"{fmt}: {top} streams' tokens/s over its compute bound"),
            Figure(f"{fmt}.scaling", scaling, "x",
                   f"{fmt}: tokens/s at {many} streams / at {low}"),
            Figure(f"{fmt}.scaling_at_bounds", most, "x",
                   f"{fmt}: what {many} streams gain over {low} in an engine at this "
                   "machine's bounds (copy bandwidth, matmul rate; limits.scaling_at_bounds)"),
            Figure(f"{fmt}.scaling_at_read_bounds", most_read, "x",
                   f"{fmt}: the same with the read bandwidth (torch's threads) for one "
                   "stream's bound"),
        ]
        limit_rows.append((fmt, run.macs / 1e6 if run.macs else None, run.dtype, ceiling, at_top,
                       of_ceiling, scaling, most, most_read))
        if run.packed_rows is not None:
            figures.append(Figure(f"{fmt}.packed_rows", run.packed_rows, "sequences",
                                  f"{fmt}: the largest decode step its worker's calibration "
                                  "gave the packed kernels (0: dense at every size)"))
        for level in levels:
            figures.append(Figure(f"{fmt}.streams_{level}.output_tokens_per_s", tps[level],
                                  "tokens/s", f"{fmt}: aggregate output tokens/s of {level} "
                                  f"streams (median of {rounds} round(s))"))
        fid = fidelity.get(fmt, {})
        if fmt != "fp32":
            figures += [
                Figure(f"{fmt}.teacher_forced", fid.get("teacher_forced"), "fraction",
                       f"{fmt}: share of positions where, fed fp32's output, its greedy "
                       "choice is fp32's next token"),
                Figure(f"{fmt}.free_running", fid.get("free_running"), "fraction",
                       f"{fmt}: share of fp32's greedy tokens it repeats before the first "
                       "difference"),
            ]
            goals += [
                Goal(f"{fmt} teacher-forced", f"{fmt}.teacher_forced", ">=",
                     TEACHER_FORCED_GOAL, f"{fmt} picks fp32's next token at >= 99%"),
                Goal(f"{fmt} free-running", f"{fmt}.free_running", ">=", FREE_RUNNING_GOAL,
                     f"{fmt} keeps >= 90% of fp32's tokens before the first difference"),
            ]
        goals.append(Goal(f"{fmt} near its bound", f"{fmt}.fraction_of_bound", ">=", BOUND_GOAL,
                          f"{fmt}: one stream at >= 80% of its weight-bandwidth bound"))
        rows.append((fmt, run.weights_bytes / 1e6 if run.weights_bytes else None,
                     run.rss_bytes / 2**20, bound, *[tps[level] for level in levels],
                     one / bound if one and bound else None, of_read,
                     fid.get("teacher_forced"), fid.get("free_running")))
    best = max(formats, key=lambda f: _median([b.tokens_per_s for b in runs[f].batches[low]])
               or 0.0)
    figures.append(Figure("best.vs_fp32_bound", next(
        f.value for f in figures if f.name == f"{best}.vs_fp32_bound"), "x",
        f"the fastest format at {low} stream(s) ({best}) over the float32 bound"))
    goals.append(Goal("1.6x the fp32 bound", "best.vs_fp32_bound", ">=", FP32_BOUND_GOAL,
                      "the fastest format's one stream at >= 1.6x the float32 bound"))
    table = Table(
        f"weight formats, {args.max_tokens}-token greedy chats (tokens/s)",
        ("format", "weights MB/token", "RSS MiB", "bound tok/s",
         *[f"{level} stream(s)" for level in levels], "of bound", "of read bound",
         "teacher-forced", "free-running"),
        tuple(rows))
    limit_table = Table(
        f"the limit of many streams: arithmetic (matmul rate {rates_text(rates)})",
        ("format", "M multiply-adds/token", "computes in", "compute bound tok/s",
         f"{top} stream(s)", "of compute bound", f"{many} vs {low}",
         f"{many} vs {low} at the bounds", "at the read bounds"),
        tuple(limit_rows))
    notes = ["bound = memory bandwidth ("
             + (f"{bandwidth / 1e9:.1f} GB/s" if bandwidth else "-") + ", a one-thread copy, "
             "issue 17's measure) / bytes of weights a token reads; read bound = "
             + (f"{read_rate / 1e9:.1f} GB/s" if read_rate else "-") + " (torch reading on "
             "every thread) / the same bytes; fp16w computes in float32 on float16 weights "
             "(FBGEMM), int8 and int4 in bfloat16 (torch's weight-only CPU kernels)",
             "compute bound = the matmul rate in the dtype a format computes in / (2 x the "
             "multiply-adds of weights a token costs); attention (reading the KV cache) and "
             "the small ops come on top of it. N vs 1 at the bounds = N x max(bytes / "
             "bandwidth, 2 x multiply-adds / rate) / max(bytes / bandwidth, N x 2 x "
             "multiply-adds / rate), with the copy bandwidth, then the read one: one stream "
             "at the bytes' bound, N streams at the arithmetic's; an engine gains more only "
             "by running one stream further below its bound than N"]
    if args.skip_fidelity:
        notes.append("--skip-fidelity: the agreement figures are not measured")
    return BenchResult(
        bench="formats",
        config={"model": args.model, "formats": formats, "streams": levels,
                "max_tokens": args.max_tokens, "rounds": rounds},
        figures=tuple(figures), goals=tuple(goals), tables=(table, limit_table),
        notes=tuple(notes),
        details={fmt: {"ready_s": r.ready_s, "rounds": {
            str(level): [b.tokens_per_s for b in batches]
            for level, batches in r.batches.items()}} for fmt, r in runs.items()})


BENCHMARK = Benchmark(
    name="formats",
    help="weight formats (fp32, bf16, fp16w, int8, int4): tokens/s against the bandwidth "
         "and compute bounds, fidelity",
    description="Measure this machine's memory bandwidth and matmul rate, then the worker in "
                "each weight format over HTTP at several concurrency levels: tokens/s, "
                "memory, one stream's speed as a fraction of the format's weight-bandwidth "
                "bound, the most streams' as a fraction of its compute bound, and the "
                "format's greedy agreement with float32. One heavy process at a time.",
    add_arguments=add_arguments,
    measure=measure,
)
