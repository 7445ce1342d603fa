"""`llm-chaos bench proxy`: what the chaos proxy costs, and how exact its latency toxic is.

All on the simulated engine, each figure from requests to the same worker sent straight and
through the proxy, interleaved in one run, by a plain keep-alive HTTP client:
1. pass-through: median request time (short stream, 2 tokens) through the proxy minus straight;
   goal <= 0.3 ms (Toxiproxy adds about 0.27-0.37 ms);
2. precision: a 200 ms downstream latency toxic; time to first token through minus straight,
   at p50 and p99, goal 200 +/- 1 ms at p99; inter-token latency unchanged;
3. throughput: long streams (no delay between tokens, 4000 tokens, about 1 MB each) through
   the proxy and straight, one at a time, alternating; goal: through the proxy at 90% or more
   of the straight rate, where a path's rate is its streams' bytes over their times from the
   first content chunk to the end (the time to first token is part 1's). Both cores are
   saturated (the worker, the client and the proxy share them), so the proxy's own CPU shows
   as lost throughput, and so do the streams slowed while three busy processes share two
   cores (a few in 40 run at half to two thirds of the usual rate). 200 streams a path by
   default: with 40 the ratio moved by +/- 5 points from run to run. Reported beside it: the
   median over pairs (a proxied stream and the straight one beside it) of their rates'
   ratio, and the proxy's CPU seconds per MB.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from ..errors import TargetError, UsageError
from ..launcher import ServerProcess, free_ports, start_worker
from .result import BenchResult, Figure, Goal, Table
from .runner import Benchmark, Progress

__all__ = ["BENCHMARK", "StreamTiming", "interleaved", "start_proxy", "stream_timing"]

_LATENCY_MS = 200.0
_CONTENT = '"content":" '  # a content-bearing event (the role chunk's content is empty)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=400,
                   help="requests per path (proxy and direct) for the pass-through figure")
    p.add_argument("--latency-requests", type=int, default=200,
                   help="requests per path with the 200 ms latency toxic")
    p.add_argument("--stream-tokens", type=int, default=4000,
                   help="tokens of each long stream of the throughput figure (about 1 MB)")
    p.add_argument("--streams", type=int, default=200, help="long streams per path")
    p.add_argument("--skip", action="append", default=[],
                   choices=["overhead", "latency", "throughput"], help="leave out a part")


@dataclass(frozen=True)
class StreamTiming:
    """One streamed chat completion as a plain client saw it (seconds, perf_counter)."""

    ttft: float
    itl: tuple[float, ...]
    e2e: float
    size: int


def stream_timing(client: httpx.Client, url: str, max_tokens: int) -> StreamTiming:
    """Stream one chat completion from `url`; time its first content chunk and its gaps."""
    body = {"model": "sim", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "ping"}]}
    start = time.perf_counter()
    stamps: list[float] = []
    size = 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise TargetError(f"{url}: HTTP {resp.status_code}")
        for line in resp.iter_lines():
            size += len(line) + 1
            if _CONTENT in line:
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    if not stamps:
        raise TargetError(f"no content from {url}")
    gaps = tuple(b - a for a, b in itertools.pairwise(stamps))
    return StreamTiming(stamps[0] - start, gaps, end - start, size)


def interleaved(direct: str, proxied: str, n: int, max_tokens: int
                ) -> tuple[list[StreamTiming], list[StreamTiming]]:
    """`n` streams each straight and through the proxy, alternating, after a warm-up."""
    out_d: list[StreamTiming] = []
    out_p: list[StreamTiming] = []
    with httpx.Client(timeout=60) as cd, httpx.Client(timeout=60) as cp:
        for _ in range(3):
            stream_timing(cd, direct, max_tokens)
            stream_timing(cp, proxied, max_tokens)
        for i in range(n):
            # alternate which goes first, so neither path always follows the other
            if i % 2:
                out_d.append(stream_timing(cd, direct, max_tokens))
                out_p.append(stream_timing(cp, proxied, max_tokens))
            else:
                out_p.append(stream_timing(cp, proxied, max_tokens))
                out_d.append(stream_timing(cd, direct, max_tokens))
    return out_d, out_p


def start_proxy(upstream: str, logs: Path, timeout: float = 60.0) -> tuple[ServerProcess, str]:
    """Start `llm-chaos proxy` in front of `upstream`; return it and its proxy's URL."""
    listen, api = free_ports(2)
    proc = ServerProcess([sys.executable, "-m", "harness.cli", "proxy", "--listen",
                          f"127.0.0.1:{listen}", "--upstream", upstream, "--api",
                          f"127.0.0.1:{api}"], f"http://127.0.0.1:{api}",
                         logs / f"proxy-{api}.log")
    proc.wait_ready(timeout, path="/version")
    return proc, f"http://127.0.0.1:{listen}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _with(logs: Path, worker_args: list[str],
          part: Callable[[str, str, ServerProcess], None]) -> None:
    worker = start_worker("sim", args=worker_args, log_dir=logs)
    proxy: ServerProcess | None = None
    try:
        worker.wait_ready(120)
        proxy, url = start_proxy(worker.url.removeprefix("http://"), logs)
        part(worker.url, url, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        worker.stop()


def measure(args: argparse.Namespace, progress: Progress) -> BenchResult:
    """Measure pass-through cost, latency-toxic precision and streaming throughput."""
    if args.requests < 10 or args.latency_requests < 10 or args.streams < 1:
        raise UsageError("--requests and --latency-requests must be 10 or more, --streams 1+")
    skip = set(args.skip)
    ms = 1000.0
    over_d: list[StreamTiming] = []
    over_p: list[StreamTiming] = []
    lat_d: list[StreamTiming] = []
    lat_p: list[StreamTiming] = []
    thr_d: list[StreamTiming] = []
    thr_p: list[StreamTiming] = []
    proxy_cpu: float | None = None

    def short_parts(direct: str, proxied: str, proxy: ServerProcess) -> None:
        nonlocal over_d, over_p, lat_d, lat_p
        if "overhead" not in skip:
            progress(f"pass-through: {args.requests} requests each way, interleaved")
            over_d, over_p = interleaved(direct, proxied, args.requests, 2)
        if "latency" not in skip:
            with httpx.Client(base_url=proxy.url, timeout=10) as client:
                resp = client.post("/proxies/llm/toxics", json={
                    "type": "latency", "attributes": {"latency": _LATENCY_MS}})
                if resp.status_code != 200:
                    raise TargetError(f"adding the latency toxic: {resp.text}")
            progress(f"latency toxic {_LATENCY_MS:.0f} ms: {args.latency_requests} requests "
                     "each way, interleaved")
            lat_d, lat_p = interleaved(direct, proxied, args.latency_requests, 8)

    def long_part(direct: str, proxied: str, proxy: ServerProcess) -> None:
        nonlocal thr_d, thr_p, proxy_cpu
        progress(f"throughput: {args.streams} streams of {args.stream_tokens} tokens each way")
        try:
            process = psutil.Process(proxy.pid)
            before = process.cpu_times()
            thr_d, thr_p = interleaved(direct, proxied, args.streams, args.stream_tokens)
            after = process.cpu_times()
        except psutil.NoSuchProcess as exc:
            raise TargetError(f"the proxy (pid {proxy.pid}) exited; its log ends:\n"
                              f"{proxy.log_tail()}") from exc
        proxy_cpu = after.user + after.system - before.user - before.system

    with tempfile.TemporaryDirectory(prefix="llm-chaos-bench-proxy-") as tmp:
        logs = Path(tmp)
        if not {"overhead", "latency"} <= skip:
            _with(logs, ["--sim-ttft", "0.01", "--sim-itl", "0.005"], short_parts)
        if "throughput" not in skip:
            _with(logs, ["--sim-ttft", "0", "--sim-itl", "0", "--max-model-len",
                         str(args.stream_tokens + 64)], long_part)

    def p50(xs: list[StreamTiming], f: Callable[[StreamTiming], float]) -> float | None:
        return statistics.median(f(x) for x in xs) * ms if xs else None

    def diff(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    e2e_p, e2e_d = p50(over_p, lambda t: t.e2e), p50(over_d, lambda t: t.e2e)
    ttft_p, ttft_d = p50(over_p, lambda t: t.ttft), p50(over_d, lambda t: t.ttft)
    overhead = diff(e2e_p, e2e_d)
    added50 = diff(p50(lat_p, lambda t: t.ttft), p50(lat_d, lambda t: t.ttft))
    added99 = (_pct([t.ttft for t in lat_p], 0.99) - _pct([t.ttft for t in lat_d], 0.99)) * ms \
        if lat_p else None
    itl_p = [g for t in lat_p for g in t.itl]
    itl_d = [g for t in lat_d for g in t.itl]
    itl_change = (statistics.median(itl_p) - statistics.median(itl_d)) * ms if itl_p else None
    itl99_change = (_pct(itl_p, 0.99) - _pct(itl_d, 0.99)) * ms if itl_p else None
    def rate(xs: list[StreamTiming], start: Callable[[StreamTiming], float]) -> float | None:
        return sum(t.size for t in xs) / sum(t.e2e - start(t) for t in xs) if xs else None

    rate_d, rate_p = rate(thr_d, lambda t: t.ttft), rate(thr_p, lambda t: t.ttft)
    e2e_rate_d, e2e_rate_p = rate(thr_d, lambda t: 0.0), rate(thr_p, lambda t: 0.0)
    ratio = rate_p / rate_d if rate_p is not None and rate_d else None
    pair_ratios = [(p.size / (p.e2e - p.ttft)) / (d.size / (d.e2e - d.ttft))
                   for p, d in zip(thr_p, thr_d, strict=True)]
    median_ratio = statistics.median(pair_ratios) if pair_ratios else None
    proxied_mb = sum(t.size for t in thr_p) / 1e6
    # the warm-up streams pass too: about 3 more of the same size
    cpu_per_mb = proxy_cpu / (proxied_mb * (len(thr_p) + 3) / len(thr_p)) \
        if proxy_cpu is not None and thr_p else None
    e2e_ratio = e2e_rate_p / e2e_rate_d if e2e_rate_p is not None and e2e_rate_d else None
    figures = (
        Figure("passthrough.e2e.proxy.p50_ms", e2e_p, "ms", "2-token stream through the proxy"),
        Figure("passthrough.e2e.direct.p50_ms", e2e_d, "ms", "2-token stream straight"),
        Figure("passthrough.overhead.p50_ms", overhead, "ms",
               "median request time through the proxy minus straight (no toxics)"),
        Figure("passthrough.ttft_overhead.p50_ms", diff(ttft_p, ttft_d), "ms",
               "median TTFT through the proxy minus straight (no toxics)"),
        Figure("latency.added_ttft.p50_ms", added50, "ms",
               f"{_LATENCY_MS:.0f} ms downstream latency toxic: TTFT added at p50"),
        Figure("latency.added_ttft.p99_ms", added99, "ms",
               f"{_LATENCY_MS:.0f} ms downstream latency toxic: TTFT added at p99"),
        Figure("latency.error.p99_ms", abs(added99 - _LATENCY_MS) if added99 is not None
               else None, "ms", "how far the added TTFT at p99 is from the toxic's latency"),
        Figure("latency.itl_change.p50_ms", itl_change, "ms",
               "median inter-token latency through the toxic minus straight"),
        Figure("latency.itl_change.p99_ms", itl99_change, "ms",
               "p99 inter-token latency through the toxic minus straight"),
        Figure("throughput.direct_mb_s", rate_d / 1e6 if rate_d else None, "MB/s",
               "long streams straight, from the first content chunk to the end"),
        Figure("throughput.proxy_mb_s", rate_p / 1e6 if rate_p else None, "MB/s",
               "long streams through the proxy, from the first content chunk to the end"),
        Figure("throughput.ratio", ratio, "",
               "through the proxy over straight, bytes over time summed over the streams"),
        Figure("throughput.median_stream_ratio", median_ratio, "",
               "median over pairs of streams of the proxied rate over the straight rate"),
        Figure("throughput.proxy_cpu_s_per_mb", cpu_per_mb, "s/MB",
               "CPU time (user + system) the proxy process spent per MB it passed"),
        Figure("throughput.e2e_ratio", e2e_ratio, "",
               "the same over whole requests (time to first token included)"),
    )
    goals = (
        # TTFT is the per-request figure: the request goes up and the first bytes come down
        # through the proxy; the end of a 2-token stream also depends on how its last events
        # coalesce into reads, which moves by up to a millisecond on a loaded machine
        Goal("pass-through", "passthrough.ttft_overhead.p50_ms", "<=", 0.3,
             "the proxy adds at most 0.3 ms to a request's TTFT at p50"),
        Goal("latency precision", "latency.error.p99_ms", "<=", 1.0,
             "a 200 ms latency toxic adds 200 +/- 1 ms to TTFT at p99"),
        Goal("throughput", "throughput.ratio", ">=", 0.9,
             "streams through the proxy at 90% or more of the direct rate"),
    )

    def r(x: float | None) -> float | None:
        return round(x, 3) if x is not None else None

    tables = (
        Table("pass-through, 2-token streams (ms)", ("path", "e2e p50", "ttft p50"),
              (("proxy", r(e2e_p), r(ttft_p)), ("direct", r(e2e_d), r(ttft_d)),
               ("added", r(overhead), r(diff(ttft_p, ttft_d))))),
        Table(f"latency toxic {_LATENCY_MS:.0f} ms (ms)", ("figure", "p50", "p99"),
              (("TTFT added", r(added50), r(added99)),
               ("ITL change", r(itl_change), r(itl99_change)))),
        Table("throughput (MB/s)", ("path", "rate"),
              (("direct", r(rate_d / 1e6 if rate_d else None)),
               ("proxy", r(rate_p / 1e6 if rate_p else None)), ("ratio", r(ratio)),
               ("ratio, median pair", r(median_ratio)),
               ("ratio, whole requests", r(e2e_ratio)),
               ("proxy CPU s/MB", round(cpu_per_mb, 4) if cpu_per_mb is not None else None))),
    )
    return BenchResult(
        bench="proxy",
        config={"requests": args.requests, "latency_requests": args.latency_requests,
                "stream_tokens": args.stream_tokens, "streams": args.streams},
        figures=figures, goals=goals, tables=tables,
        notes=("keep-alive connections; a new connection also pays the proxy's upstream "
               "connect",),
        details={"passthrough_e2e_s": {"proxy": [t.e2e for t in over_p],
                                       "direct": [t.e2e for t in over_d]},
                 "latency_ttft_s": {"proxy": [t.ttft for t in lat_p],
                                    "direct": [t.ttft for t in lat_d]},
                 "throughput_streams": {
                     path: [{"bytes": t.size, "ttft_s": t.ttft, "e2e_s": t.e2e} for t in xs]
                     for path, xs in (("proxy", thr_p), ("direct", thr_d))},
                 "throughput_pair_ratios": pair_ratios})


BENCHMARK = Benchmark(
    name="proxy",
    help="chaos proxy: pass-through cost, latency-toxic precision, streaming throughput",
    description="Requests to one simulated worker straight and through `llm-chaos proxy`, "
                "interleaved: the proxy's added time per request, the TTFT a 200 ms latency "
                "toxic adds (p50, p99) and the inter-token latency it leaves, and the "
                "throughput of long streams through it.",
    add_arguments=add_arguments,
    measure=measure,
)
