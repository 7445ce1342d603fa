"""`llm-chaos bench formats`: the weight formats end to end on the tiny model, and the bound's
arithmetic. The goals themselves are judged by a real SmolLM2 run (README), not here."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from harness.bench import formats
from harness.bench.limits import Limits
from harness.bench.streams import BatchTiming, StreamTiming
from harness.errors import UsageError
from tests.benching import run_bench

# The end-to-end run below asserts a benchmark's shape on the tiny model, never a timing: it
# runs beside another test (make test's second phase), started first as a long one.


@pytest.mark.long
@pytest.mark.timeout(240)
def test_every_format_end_to_end_on_the_tiny_model(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Six real workers, one at a time, and the fidelity subprocess: every figure measured,
    the bytes a token reads shrink with the format, the table and goals printed."""
    run = run_bench(tmp_path, capsys, "formats", "--model", "tiny", "--quick", "--streams",
                    "1,2", "--max-tokens", "4")
    figures = run.figures
    missing = [name for name, value in figures.items() if value is None]
    assert not missing, missing
    size = {fmt: figures[f"{fmt}.weight_bytes_per_token"] for fmt in formats.FORMATS}
    assert size["fp32"] > size["bf16"] > size["int8"] > size["int4"]
    # one stream reads the packed int4 weights (the norms stay in the dense dtype: float32
    # where the CPU lacks bf16, a few hundred bytes more on the tiny model)
    assert size["auto"] == pytest.approx(size["int4"], rel=0.001)
    # the tiny model's rows are short: the byte counts are the layers' own, not estimates
    assert size["fp32"] == pytest.approx(2 * size["bf16"], rel=0.01)
    # fp16w: 2 bytes a weight as bf16 (its embedding row stays float32)
    assert size["fp16w"] == pytest.approx(size["bf16"], rel=0.01)
    for fmt in formats.FORMATS:
        assert figures[f"{fmt}.bound_tokens_per_s"] == pytest.approx(
            figures["machine.copy_bandwidth_bytes_per_s"] / size[fmt])
        # the same tokens/s against what torch's threads read (reported beside issue 17's)
        assert figures[f"{fmt}.fraction_of_read_bound"] == pytest.approx(
            figures[f"{fmt}.streams_1.output_tokens_per_s"] * size[fmt]
            / figures["machine.read_bandwidth_bytes_per_s"])
    for fmt in ("bf16", "fp16w", "int8", "int4", "auto"):
        assert 0 <= figures[f"{fmt}.teacher_forced"] <= 1
    assert run.data["machine"]["cpu_model"]
    assert "weight formats" in run.out and "int4 near its bound" in run.out


def test_formats_are_checked_and_fp32_always_runs() -> None:
    assert formats._formats("int4") == ["fp32", "int4"]
    assert formats._formats("auto,int4,fp16w,bf16,fp32") == ["fp32", "bf16", "fp16w", "int4",
                                                              "auto"]
    with pytest.raises(UsageError, match="int3 unknown; expected fp32, bf16, fp16w, int8, int4, "
                                         "auto"):
        formats._formats("int3,int4")


def _run(weights: int, tokens_per_s: float) -> formats._FormatRun:
    """One stream of 64 tokens at `tokens_per_s`."""
    stream = StreamTiming(text="x", output_tokens=64, ttft=0.1, e2e=64 / tokens_per_s)
    batch = BatchTiming(streams=(stream,), wall=64 / tokens_per_s)
    return formats._FormatRun(weights, 2**30, 1.0, {1: [batch]})


def test_bound_fractions_and_goals() -> None:
    """1 GB/s over 100 MB a token bounds one stream at 10 tokens/s: 8 tokens/s is 80%."""
    args = argparse.Namespace(streams=[1], max_tokens=64, model="m", skip_fidelity=False)
    runs = {"fp32": _run(400_000_000, 1.5), "int4": _run(100_000_000, 8.0)}
    fidelity = {"int4": {"teacher_forced": 0.995, "free_running": 0.85}}
    result = formats._result(args, ["fp32", "int4"], 1, Limits(copy=1e9), runs, fidelity)
    assert result.value("fp32.bound_tokens_per_s") == pytest.approx(2.5)
    assert result.value("int4.fraction_of_bound") == pytest.approx(0.8)
    assert result.value("best.vs_fp32_bound") == pytest.approx(8.0 / 2.5)
    met = {row["name"]: row["met"] for row in result.goal_rows()}
    assert met["int4 near its bound"] and met["1.6x the fp32 bound"]
    assert met["int4 teacher-forced"] and not met["int4 free-running"]
    assert not met["fp32 near its bound"]  # 1.5 of 2.5 tokens/s


def test_the_limit_of_many_streams_is_reported_per_format() -> None:
    """fp32 computing at 100 GFLOP/s, 50 M multiply-adds: bound 1000 tokens/s; 500 at 16
    streams is half of it and 2.5x one stream's 200."""
    args = argparse.Namespace(streams=[1, 16], max_tokens=64, model="m", skip_fidelity=True)

    def batch(tokens_per_s: float, streams: int) -> BatchTiming:
        stream = StreamTiming(text="x", output_tokens=64, ttft=0.1, e2e=1.0)
        return BatchTiming(streams=(stream,) * streams, wall=64 * streams / tokens_per_s)

    runs = {"fp32": formats._FormatRun(200_000_000, 2**30, 1.0,
                                       {1: [batch(200, 1)], 16: [batch(500, 16)]},
                                       macs=50_000_000, dtype="float32")}
    result = formats._result(args, ["fp32"], 1, Limits(10e9, 40e9, 2, {"float32": 100e9,
                                                                    "bfloat16": 200e9}),
                             runs, {})
    assert result.value("machine.bfloat16_matmul_flops_per_s") == 200e9
    assert result.value("fp32.compute_bound_tokens_per_s") == pytest.approx(1000)
    assert result.value("fp32.fraction_of_compute_bound") == pytest.approx(0.5)
    assert result.value("fp32.scaling") == pytest.approx(2.5)
    # a token's arithmetic is 1 ms. Copying at 10 GB/s one stream reads its 200 MB in 20 ms
    # and 16 streams take max(20, 16) ms: 16x. Reading at 40 GB/s: 5 ms, max(5, 16): 5x
    assert result.value("fp32.scaling_at_bounds") == pytest.approx(16)
    assert result.value("fp32.scaling_at_read_bounds") == pytest.approx(5)
    assert any(t.title.startswith("the limit of many streams") for t in result.tables)
