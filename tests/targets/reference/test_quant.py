"""Weight-only int8 and int4 projections (targets/reference/quant.py) on torch's CPU kernels."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from targets.reference.quant import INT4_GROUP, INT8_ROWS, QuantLinear, describe_weights


def _error(layer: QuantLinear, weight: torch.Tensor, rows: int, bias: torch.Tensor | None = None,
           seed: int = 0) -> float:
    x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(seed))
    want = x @ weight.T + (0 if bias is None else bias)
    got = layer(x).float()
    assert got.shape == want.shape and layer(x).dtype == torch.bfloat16
    return float((got - want).norm() / want.norm())


def _q4_1_grid(out: int, inp: int) -> torch.Tensor:
    """Weights on GGUF Q4_1's grid (per 32 inputs: min + scale * q, q in 0..15), as the
    bundled SmolLM2's projections are; scales and minima exact in bfloat16."""
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (out, inp // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # Q4_1's minimum and scale come from each group's extremes
    scale = (torch.rand(out, inp // 32, 1, generator=g) * 0.01 + 0.001).bfloat16().float()
    low = (-8 * scale - torch.rand(out, inp // 32, 1, generator=g) * 0.002).bfloat16().float()
    return (low + scale * q).view(out, inp)


@pytest.mark.parametrize("rows", [1, INT8_ROWS, INT8_ROWS + 1, 40])
def test_int8_per_channel_error_is_small_on_both_paths(rows: int) -> None:
    """Up to INT8_ROWS rows the packed kernel, above it a bfloat16 matmul of the converted
    weights: both within int8 + bfloat16 rounding of the float32 product."""
    weight = torch.randn(96, 64)
    bias = torch.randn(96)
    assert _error(QuantLinear(weight, bias, "int8"), weight, rows, bias) < 0.02


def test_int4_reproduces_weights_on_the_q4_1_grid() -> None:
    """On Q4_1's own grid int4 loses nothing but bfloat16 rounding; on Gaussian weights it
    loses ~8% (what 16 levels cost), so the grid test can tell a wrong zero point apart."""
    grid = _q4_1_grid(96, 128)
    assert _error(QuantLinear(grid, None, "int4"), grid, 4) < 0.01
    gaussian = torch.randn(96, 128)
    assert 0.03 < _error(QuantLinear(gaussian, None, "int4"), gaussian, 4) < 0.15


def test_side_by_side_layers_compute_their_outputs_concatenated() -> None:
    mods = [torch.nn.Linear(64, n, bias=False) for n in (64, 32, 32)]
    for fmt in ("int8", "int4"):
        joined = QuantLinear.side_by_side(mods, fmt)
        weight = torch.cat([m.weight.detach() for m in mods])
        assert joined.out_features == 128
        assert _error(joined, weight, 3) < (0.02 if fmt == "int8" else 0.15)


def test_refuses_what_the_kernels_cannot_take() -> None:
    with pytest.raises(ValueError, match="int4 needs input sizes divisible by 32"):
        QuantLinear(torch.randn(8, INT4_GROUP + 1), None, "int4")
    with pytest.raises(ValueError, match="quantized format 'int2'"):
        QuantLinear(torch.randn(8, 32), None, "int2")


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_a_quantized_tiny_model_generates_and_says_what_it_holds(fmt: str) -> None:
    """load_model --quantize: every projection and the head replaced, bytes a token reads
    counted, and the batched engine decodes with it (the real decoder path)."""
    from targets.reference.decoder import BatchDecoder
    from targets.reference.models import ensure_tiny_folder, load_model

    plain, _ = load_model(ensure_tiny_folder(), "cpu", "float32")
    model, _ = load_model(ensure_tiny_folder(), "cpu", "auto", fmt)
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, QuantLinear)
    assert isinstance(layer.mlp.gate_up_proj, QuantLinear)
    assert not hasattr(layer.self_attn, "q_proj")
    assert isinstance(model.lm_head, QuantLinear)
    described = describe_weights(model)
    full = describe_weights(plain)
    assert described["format"] == fmt and full["format"] == "fp32"
    assert described["bytes_per_token"] < full["bytes_per_token"] / 2.5
    # the multiply-adds a token costs do not change with the format: one a weight
    unpacked, _ = load_model(ensure_tiny_folder(), "cpu", "float32", layout="plain")
    macs = sum(m.weight.numel() for m in unpacked.modules() if isinstance(m, torch.nn.Linear))
    assert described["macs_per_token"] == full["macs_per_token"] == macs > 0
    decoder = BatchDecoder(model, max_slots=2, max_len=32)
    logits = decoder.prefill_many([(0, [5, 6, 7], 0), (1, [8, 9], 0)])
    ids = logits.argmax(-1)
    step = decoder.decode(ids, torch.tensor([3, 2]))
    assert step.shape == logits.shape and torch.isfinite(step).all()


def test_a_dense_copy_takes_the_calls_past_the_measured_crossover() -> None:
    """--quantize auto's layout: the packed kernel up to `packed_rows` rows, the dense matmul
    beyond; `calibrate` sets `packed_rows` from timed steps, all layers one way or the other."""
    from targets.reference.quant import calibrate

    weight = torch.randn(96, 64)
    layer = QuantLinear(weight, None, "int4", torch.float32)
    x = torch.randn(5, 64)
    layer.packed_rows = 4
    dense_out = layer(x)
    assert dense_out.dtype == torch.float32
    assert torch.allclose(dense_out, x @ weight.T, atol=1e-4)  # the dense path is exact
    layer.packed_rows = 5
    packed_out = layer(x)  # packed, answered in the dense copy's dtype (float32 KV caches)
    assert packed_out.dtype == torch.float32
    assert torch.equal(packed_out, layer.packed(x.reshape(-1, 64)).float())
    model = torch.nn.Module()
    model.proj = layer
    timed: list[tuple[int, int]] = []

    def step(rows: int) -> None:  # packed slower from 8 rows on, dense slower below
        timed.append((rows, layer.packed_rows))
        packed = layer.packed_rows >= rows
        if packed == (rows >= 8):
            time.sleep(0.002)

    assert calibrate(model, step, max_rows=32, repeats=1) == 6  # grid 1, 4, 6, 8, 12, ...
    assert layer.packed_rows == 6
    assert max(rows for rows, _ in timed) == 8  # it stops at the first loss
    assert {packed for _, packed in timed} == {0, 1 << 30}  # every layer one way, per step


def test_one_disturbed_timing_does_not_end_the_search() -> None:
    """A loss is timed again before the search ends: one slow packed step at one row (another
    thread held the GIL) left a worker on its dense weights at every batch size, serving one
    stream at half int4's speed on an AVX2-only EPYC."""
    from targets.reference.quant import calibrate

    layer = QuantLinear(torch.randn(96, 64), None, "int4", torch.float32)
    model = torch.nn.Module()
    model.proj = layer
    calls = {"packed at 1 row": 0}

    def step(rows: int) -> None:  # packed faster below 8 rows, except its first timed step
        packed = layer.packed_rows >= rows
        if packed and rows == 1:
            calls["packed at 1 row"] += 1
            if calls["packed at 1 row"] == 2:  # the first call is untimed
                time.sleep(0.05)
        if packed == (rows >= 8):
            time.sleep(0.002)

    assert calibrate(model, step, max_rows=32, repeats=1) == 6
    assert calls["packed at 1 row"] > 2  # it was timed again


def test_int8_converts_in_float32_where_bfloat16_is_emulated(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Above `packed_rows` int8 converts its weights for one matmul: in bfloat16 only where the
    CPU has it natively (emulated, it cost 3x float32 at 16 rows on an AVX2-only EPYC)."""
    from targets.reference import models, quant

    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda native=native: native)
        quant._conversion_dtype.cache_clear()
        assert quant._conversion_dtype() is dtype
        weight = torch.randn(96, 64)
        layer = QuantLinear(weight, None, "int8")
        layer.packed_rows = 0  # every call converted
        assert _error(layer, weight, 16) < 0.02
    quant._conversion_dtype.cache_clear()


def test_int8_layers_are_calibrated_too() -> None:
    """int8's kernel against its converted weights is a choice the engine times as well: a
    model quantized to int8 has every layer switchable, head included; one quantized to int4
    has none (int4's kernel has no such cliff, and its head is int4 too)."""
    from targets.reference.models import ensure_tiny_folder, load_model
    from targets.reference.quant import calibrate, needs_calibration

    model, _ = load_model(ensure_tiny_folder(), "cpu", "auto", "int8")
    assert needs_calibration(model)
    assert describe_weights(model)["packed_rows"] == INT8_ROWS  # until calibrated
    timed: list[int] = []
    assert calibrate(model, lambda rows, timed=timed: timed.append(rows), 4) in (0, 1, 4)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert model.lm_head in layers and all(m.switchable for m in layers)
    assert len({m.packed_rows for m in layers}) == 1  # all set by the calibration
    int4, _ = load_model(ensure_tiny_folder(), "cpu", "auto", "int4")
    assert isinstance(int4.lm_head, QuantLinear) and int4.lm_head.fmt == "int4"
    assert not needs_calibration(int4) and "packed_rows" not in describe_weights(int4)
    plain, _ = load_model(ensure_tiny_folder(), "cpu", "float32", None)
    assert not needs_calibration(plain)


def test_auto_keeps_int4_beside_the_dtype_it_resolves_to() -> None:
    """On the tiny model: int4 packed plus float32 dense weights, the embedding in float32,
    and a float32 head kept for rescoring; `/debug/engine`'s description says so."""
    from targets.reference.models import ensure_tiny_folder, load_model

    model, _ = load_model(ensure_tiny_folder(), "cpu", "float32", "auto")
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, QuantLinear) and layer.fmt == "int4"
    assert layer.dense is not None and layer.dense.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.head_fp32 is not None and model.head_fp32.dtype == torch.float32
    described = describe_weights(model)
    assert described["format"] == "int4+fp32"
    assert described["packed_rows"] == 1 << 30  # until the engine calibrates


def test_auto_on_float32_calibrates_and_decodes_on_the_real_decoder() -> None:
    """Where the CPU lacks bf16, auto's dense copy is float32: the packed kernels' bfloat16
    answers must not reach the float32 KV cache (it did: the engine thread died calibrating,
    on an AVX2-only EPYC, and every request waited forever)."""
    from targets.reference.decoder import BatchDecoder
    from targets.reference.models import ensure_tiny_folder, load_model
    from targets.reference.quant import calibrate

    model, _ = load_model(ensure_tiny_folder(), "cpu", "float32", "auto")
    decoder = BatchDecoder(model, max_slots=4, max_len=80)
    with torch.inference_mode():
        rows = calibrate(model, decoder.timing_step, 4)
        logits = decoder.prefill_many([(0, [5, 6, 7], 0), (1, [8, 9], 0)])
        step = decoder.decode(logits.argmax(-1), torch.tensor([3, 2]))
    assert 0 <= rows <= 4 and describe_weights(model)["packed_rows"] == rows
    assert step.dtype == torch.float32 and torch.isfinite(step).all()


def test_auto_falls_back_where_int4_cannot_run(tmp_path: Path) -> None:
    from targets.reference.models import _auto_refusal

    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 100, '
                                          '"intermediate_size": 256}')
    assert "not multiples of int4's groups of 32" in str(_auto_refusal(tmp_path, "cpu",
                                                                        "float32"))
    assert "CPU-only" in str(_auto_refusal(tmp_path, "cuda", "float32"))
    assert "float32 or bfloat16 only" in str(_auto_refusal(tmp_path, "cpu", "float16"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "hidden_size": 64, '
                                          '"intermediate_size": 256}')
    assert "not a Llama-family model" in str(_auto_refusal(tmp_path, "cpu", "float32"))


def test_an_engine_is_not_ready_until_its_kernels_are_timed() -> None:
    """The engine calibrates on its own thread before its first step, and says it is not
    ready meanwhile: requests served then skewed the timings (a worker chose its dense
    weights at every size when a benchmark's warm-up arrived during its calibration)."""
    from targets.reference.engine import BatchEngine
    from targets.reference.models import ensure_tiny_folder, load_model
    from tests.waiting import wait_for

    model, tok = load_model(ensure_tiny_folder(), "cpu", "auto", "int8")
    engine = BatchEngine(model, tok, "tiny", max_num_seqs=4, threads=1)
    assert engine.calibrating
    seen: list[tuple[bool, str]] = []  # what the worker's /health said while it calibrated
    real = engine.decoder.timing_step

    def timing_step(rows: int) -> None:
        seen.append(engine.healthy())
        real(rows)

    engine.decoder.timing_step = timing_step  # type: ignore[method-assign]
    engine.start()
    try:
        wait_for(lambda: engine.healthy()[0], 60, "the engine to calibrate and be ready")
        assert seen and not any(ok for ok, _ in seen) and "timing" in seen[0][1], seen
        assert not engine.calibrating
        assert engine.stats()["weights"]["packed_rows"] in (0, 1, 4)  # the grid up to 4
    finally:
        engine.stop()
