"""This machine's limits for a decode step, measured where the harness runs: memory bandwidth
(a one-thread copy, issue 17's measure, and torch reading on its threads) bounds one stream,
which reads every weight once a token; the rate of torch's matrix product bounds many
streams, which share each weight read and are left with its arithmetic. `bench formats` and
`bench engine` report tokens/s against both.

torch runs in child processes: the harness does not import it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .result import Figure

__all__ = ["Limits", "compute_bound", "copy_bandwidth", "device_copy_bandwidth",
           "machine_figures", "matmul_rates", "measure_limits", "rates_text", "read_bandwidth",
           "scaling_at_bounds", "weight_counts"]

COPY_BYTES = 512 * 2**20


def copy_bandwidth(nbytes: int = COPY_BYTES, repeats: int = 3) -> float:
    """Bytes per second moved (read plus written) by the best of `repeats` copies of `nbytes`:
    one thread's memcpy between two buffers far larger than any cache."""
    src = bytearray(nbytes)
    dst = bytearray(nbytes)
    dst[:] = src  # both buffers' pages mapped before timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst[:] = src
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


# one GiB of float32 summed by torch on every core it may use (or on the GPU named by the
# argument), in its own process (the harness does not import torch): the bytes a token's
# projections can actually be read at
_READ_SCRIPT = """
import sys, time, torch
device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
x = torch.ones(2**28, device=device)
best = float("inf")
for i in range(6):
    sync()
    start = time.perf_counter()
    x.sum()
    sync()
    if i:  # the first one maps the pages
        best = min(best, time.perf_counter() - start)
print(x.numel() * x.element_size() / best, torch.get_num_threads() if device == "cpu" else 0)
"""

# a GPU's own copy of 512 MiB (device to device), bytes read plus written: the CPU's
# one-thread copy above has no meaning for weights held on the GPU
_DEVICE_COPY_SCRIPT = """
import sys, time, torch
a = torch.ones(2**27, device=sys.argv[1])
b = torch.empty_like(a)
best = float("inf")
for i in range(10):
    torch.cuda.synchronize()
    start = time.perf_counter()
    b.copy_(a)
    torch.cuda.synchronize()
    if i:
        best = min(best, time.perf_counter() - start)
print(2 * a.numel() * a.element_size() / best)
"""


def _child_lines(script: str, device: str, timeout: float) -> list[str]:
    """What a torch child process printed, line by line; the lines it printed before it
    overran `timeout`."""
    try:
        out = subprocess.run([sys.executable, "-c", script, device], capture_output=True,
                             text=True, check=False, timeout=timeout).stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
    return out.splitlines()


def device_copy_bandwidth(device: str) -> float | None:
    """Bytes per second a GPU's own copy of 512 MiB moves (read plus written, best of 9);
    None if it could not run."""
    lines = _child_lines(_DEVICE_COPY_SCRIPT, device, 120)
    try:
        return float(lines[0])
    except (IndexError, ValueError):
        return None


def read_bandwidth(device: str = "cpu") -> tuple[float, int] | None:
    """Bytes per second torch reads (a sum over 1 GiB, best of 5) on the threads it uses by
    default (or on `device`, a GPU: 0 threads), and that thread count; None if it could not
    run. Unlike `copy_bandwidth` (issue 17's bound: one thread, bytes read plus written)
    this is what several threads reading weights get: 31-62 GB/s in runs on a 2-core
    AVX512-BF16 EPYC, where the copy moved 21-24."""
    lines = _child_lines(_READ_SCRIPT, device, 120)
    try:
        rate, threads = lines[0].split()
        return float(rate), int(threads)
    except (IndexError, ValueError):
        return None


# float32 and bfloat16 matrix products on every core torch may use (or on the GPU named by
# the argument), in its own process: the most arithmetic a step of many streams can get
# (square products this size ran at the machine's peak, where a decode step's thin ones run a
# little below it)
_MATMUL_SCRIPT = """
import sys, time, torch
device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)


def rate(n, dtype, seconds):
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    sync()
    best, began, timed = float("inf"), time.perf_counter(), 0
    while timed < 20 and (timed < 3 or time.perf_counter() - began < seconds):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
        timed += 1
    return 2 * n ** 3 / best


for dtype in (torch.float32, torch.bfloat16):
    if device != "cpu":  # a GPU: large products, both dtypes native
        value = rate(8192, dtype, 2)
    else:
        small = rate(256, dtype, 1)
        # a dtype the CPU only emulates (bfloat16 without AVX512-BF16: 0.4 GFLOP/s) is
        # timed on the small product alone, not for minutes on the large one
        value = rate(2048, dtype, 2) if 2 * 2048 ** 3 / small < 1 else small
    print(str(dtype).removeprefix("torch."), value, flush=True)
"""


def matmul_rates(device: str = "cpu") -> dict[str, float]:
    """Floating-point operations per second of torch's matrix product in float32 and
    bfloat16 (the best of 3 to 20 products of two 2048-square matrices, 2 s of them where
    each is quick; of 256-square ones where a large product would take over a second;
    8192-square on a GPU, `device`), by dtype name; empty if it could not run. bfloat16 is
    emulated, and far slower, where the CPU has no native bf16. Best of many: the best of 5
    in half a second once read 135 GFLOP/s in float32 on a 2-core AVX512-BF16 EPYC that gave
    179-187 in three runs a minute later."""
    rates = {}
    for line in _child_lines(_MATMUL_SCRIPT, device, 300):  # the dtypes it timed in time
        name, _, rate = line.partition(" ")
        try:
            rates[name] = float(rate)
        except ValueError:
            continue
    return rates


def compute_bound(rate: float | None, macs: int | None) -> float | None:
    """Tokens/s a step of many streams can reach at most: the CPU's matmul rate over the
    two operations (a multiply and an add) of each weight a token costs."""
    return rate / (2 * macs) if rate and macs else None


def scaling_at_bounds(streams: int, bandwidth: float | None, weight_bytes: int | None,
                      rate: float | None, macs: int | None, base: int = 1) -> float | None:
    """What `streams` streams gain over `base` streams, in aggregate tokens/s, in an engine
    that runs at this machine's bounds: a step of b streams takes at least max(weight bytes /
    bandwidth, b * 2 * macs / rate), reading every weight once and computing b tokens.
    Where one stream is bound by bandwidth and many by arithmetic, many over one is (bytes /
    bandwidth) / (2 * macs / rate), the machine's operations per byte over the format's.
    An engine at fraction f1 of one stream's bound and fm of many's gains this times
    fm / f1: more than this only by running one stream further below its bound."""
    if not (bandwidth and weight_bytes and rate and macs):
        return None

    def step(b: int) -> float:
        return max(weight_bytes / bandwidth, b * 2 * macs / rate)

    return (streams / step(streams)) / (base / step(base))


def rates_text(rates: dict[str, float]) -> str:
    """"float32 189 GFLOP/s, bfloat16 419 GFLOP/s", or "not measured"."""
    return ", ".join(f"{name} {rate / 1e9:.3g} GFLOP/s" for name, rate in rates.items()) \
        or "not measured"


@dataclass(frozen=True)
class Limits:
    """What `measure_limits` measured: bytes/s copied (read plus written) and read, the
    threads that read, and matmul FLOP/s by dtype name; None (empty) where not measured.
    `device`: cpu (this machine's memory and cores) or cuda (the GPU's)."""

    copy: float | None = None
    read: float | None = None
    read_threads: int | None = None
    rates: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"


def measure_limits(progress: Callable[[str], None], device: str = "cpu") -> Limits:
    """Copy and read bandwidth and matmul rates, a few seconds in all, saying each: the CPU's,
    or with `device` cuda the GPU's (its own copy, not the CPU's one-thread one)."""
    if device == "cpu":
        progress("memory bandwidth: copying 512 MiB three times")
        copy: float | None = copy_bandwidth()
    else:
        progress(f"memory bandwidth on {device}: copying 512 MiB on the device")
        copy = device_copy_bandwidth(device)
    progress(f"memory bandwidth {copy / 1e9:.1f} GB/s (read + written)" if copy
             else f"memory bandwidth on {device}: the copy did not run")
    read = read_bandwidth(device)
    where = f"{read[1]} thread(s) (torch)" if read and read[1] else device
    progress(f"read bandwidth {read[0] / 1e9:.1f} GB/s on {where}" if read
             else "read bandwidth: torch's sum did not run")
    rates = matmul_rates(device)
    progress(f"matmul rate: {rates_text(rates)}")
    return Limits(copy, read[0] if read else None, read[1] if read else None, rates, device)


def weight_counts(weights: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(bytes of weights one stream reads a token, multiply-adds a token costs) from a
    worker's /debug/engine `weights`; None for what it does not report."""
    def count(key: str) -> int | None:
        value = weights.get(key)
        return int(value) if isinstance(value, int | float) and value > 0 else None

    return count("bytes_per_token"), count("macs_per_token")


def machine_figures(limits: Limits, dtypes: Sequence[str]) -> list[Figure]:
    """The measured limits as figures: copy and read bandwidth, the matmul rate of each of
    `dtypes` (not measured: None); on a GPU (`limits.device`) the GPU's."""
    if limits.device == "cpu":
        threads = f" ({limits.read_threads})" if limits.read_threads else ""
        copied = "one thread's memcpy of 512 MiB, bytes read plus written (best of 3)"
        read = f"torch summing 1 GiB on its default threads{threads}, bytes read (best of 5)"
        product = ("2048-square matrices on its default threads, best of 3 to 20 (256-square "
                   "where the CPU only emulates the dtype)")
    else:
        copied = (f"torch copying 512 MiB on {limits.device}, device to device, bytes read "
                  "plus written (best of 9)")
        read = f"torch summing 1 GiB on {limits.device}, bytes read (best of 5)"
        product = f"8192-square matrices on {limits.device}, best of 3 to 20"
    return [
        Figure("machine.copy_bandwidth_bytes_per_s", limits.copy, "bytes/s", copied),
        Figure("machine.read_bandwidth_bytes_per_s", limits.read, "bytes/s", read),
        *[Figure(f"machine.{dtype}_matmul_flops_per_s", limits.rates.get(dtype), "FLOP/s",
                 f"torch's {dtype} product of two {product}")
          for dtype in dtypes],
    ]
