"""`harness.bench.limits`: this machine's bandwidth and matmul rates, and the bounds they put
on one stream and on many."""

from __future__ import annotations

import subprocess

import pytest

from harness.bench import limits


def test_the_copy_moves_bytes_at_a_plausible_rate() -> None:
    rate = limits.copy_bandwidth(8 * 2**20, repeats=2)
    assert 1e8 < rate < 1e13  # 0.1 GB/s to 10 TB/s: a rate, not a duration or a byte count


def test_torch_reads_at_a_plausible_rate_on_its_threads() -> None:
    measured = limits.read_bandwidth()
    assert measured is not None
    rate, threads = measured
    assert 1e8 < rate < 1e13 and threads >= 1


def test_torch_multiplies_at_a_plausible_rate() -> None:
    rates = limits.matmul_rates()
    assert set(rates) == {"float32", "bfloat16"}
    assert all(1e8 < rate < 1e15 for rate in rates.values())  # FLOP/s, not seconds


def test_the_compute_bound_and_what_many_streams_gain_at_the_bounds() -> None:
    """100 GFLOP/s over 50 M multiply-adds a token: 1000 tokens/s at most. With 100 MB a
    token at 20 GB/s one stream takes 5 ms, 16 take max(5, 16 ms) = 16 ms: 5x at the bounds."""
    assert limits.compute_bound(100e9, 50_000_000) == pytest.approx(1000)
    assert limits.compute_bound(None, 50_000_000) is None
    assert limits.scaling_at_bounds(16, 20e9, 100_000_000, 100e9, 50_000_000) == pytest.approx(5)
    # arithmetic cheap against bytes: 16 streams cost what one does, 16x
    assert limits.scaling_at_bounds(16, 20e9, 100_000_000, 1e15, 50_000_000) == pytest.approx(16)
    # bound by arithmetic even at one stream: no gain at all
    assert limits.scaling_at_bounds(16, 20e9, 1_000, 100e9, 50_000_000) == pytest.approx(1)
    assert limits.scaling_at_bounds(16, 20e9, None, 100e9, 50_000_000) is None
    # from 4 streams (bytes-bound at 5 ms, 4 tokens) to 16 (16 ms): 16/16 over 4/5, 1.25x
    assert limits.scaling_at_bounds(16, 20e9, 100_000_000, 100e9, 50_000_000,
                                    base=4) == pytest.approx(1.25)


def test_a_measurement_that_runs_out_of_time_keeps_what_it_timed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that overruns (bfloat16 emulated on a slow CPU, say): the rates printed before
    it stay, the read bandwidth is not measured, and the benchmark goes on."""
    def overrun(cmd: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd, 1.0, output=b"float32 190000000000.0\n")

    monkeypatch.setattr(limits.subprocess, "run", overrun)
    assert limits.matmul_rates() == {"float32": 190e9}
    assert limits.read_bandwidth() is None


def test_limits_on_a_gpu_that_is_not_there_are_not_measured() -> None:
    """`--device cuda` on a machine whose torch sees no GPU: every child fails, and each limit
    is reported as not measured, none invented, and said so in the progress lines."""
    lines: list[str] = []
    measured = limits.measure_limits(lines.append, "cuda")
    assert measured == limits.Limits(device="cuda")
    assert any("the copy did not run" in line for line in lines)
    assert any("did not run" in line for line in lines if line.startswith("read bandwidth"))
    assert "matmul rate: not measured" in lines


def test_gpu_limits_are_described_as_the_gpus() -> None:
    on_gpu = limits.machine_figures(limits.Limits(copy=6e12, read=3e12, rates={"bfloat16": 8e14},
                                                  device="cuda"), ["bfloat16"])
    described = {f.name: f.description for f in on_gpu}
    assert "on cuda, device to device" in described["machine.copy_bandwidth_bytes_per_s"]
    assert "8192-square matrices on cuda" in described["machine.bfloat16_matmul_flops_per_s"]
    on_cpu = limits.machine_figures(limits.Limits(copy=2e10, read_threads=2), ["float32"])
    assert "one thread's memcpy" in on_cpu[0].description
    assert "default threads (2)" in on_cpu[1].description
