"""Projections packed at load (targets/reference/prepack.py): dense ones in oneDNN's layout,
and float16 weights computed in float32 in FBGEMM's (fp16w, `--dtype auto` on the CPU)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from targets.reference.prepack import (
    Fp16Linear,
    PackedLinear,
    _dtype_refusal,
    can_prepack,
    fp16_refusal,
    onednn_refusal,
)

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
    reason="torch built without oneDNN")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_layer_computes_what_linear_does(dtype: torch.dtype) -> None:
    """The same product as F.linear, at decode's rows and prefill's, 2-D or 3-D, with a bias:
    to the bit in bfloat16 (the reorder changes the layout, not the arithmetic), within
    float32 rounding in float32 (oneDNN may sum in another order)."""
    refusal = onednn_refusal(dtype)
    if refusal is not None:
        pytest.skip(refusal)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=g).to(dtype)
    bias = torch.randn(96, generator=g).to(dtype)
    for layer_bias in (None, bias):
        layer = PackedLinear(weight, layer_bias)
        for shape in ((1, 64), (16, 64), (200, 64), (1, 7, 64)):
            x = torch.randn(*shape, generator=g).to(dtype)
            got, want = layer(x), F.linear(x, weight, layer_bias)
            assert got.shape == want.shape and got.dtype == dtype
            if dtype == torch.bfloat16:
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert layer.nbytes == weight.nbytes + bias.nbytes


def test_load_model_packs_our_dense_models_and_the_decoder_runs_them() -> None:
    """load_model: every projection and the head packed, q/k/v and gate/up joined, the same
    bytes a token reads, /debug/engine says so; the batched decoder's logits match the
    plain layout's (float32: within rounding) in prefill and decode."""
    from targets.reference.decoder import BatchDecoder
    from targets.reference.llama import load_llama
    from targets.reference.models import ensure_tiny_folder, load_model
    from targets.reference.quant import describe_weights

    model, _ = load_model(ensure_tiny_folder(), "cpu", "float32")
    plain = load_llama(ensure_tiny_folder(), torch.float32, "cpu")
    assert can_prepack(plain) is None
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, PackedLinear)
    assert isinstance(layer.mlp.gate_up_proj, PackedLinear)
    assert isinstance(layer.mlp.down_proj, PackedLinear)
    assert isinstance(model.lm_head, PackedLinear)
    assert not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "up_proj")
    described, full = describe_weights(model), describe_weights(plain)
    assert described["layout"] == "onednn" and "layout" not in full
    assert described["format"] == full["format"] == "fp32"
    assert described["bytes_per_token"] == full["bytes_per_token"]
    got, want = BatchDecoder(model, 2, 32), BatchDecoder(plain, 2, 32)
    prompts = [(0, [5, 6, 7, 8], 0), (1, [9, 10], 0)]
    for a, b in ((got.prefill_many(prompts), want.prefill_many(prompts)),
                 (got.decode(torch.tensor([3, 4]), torch.tensor([4, 2])),
                  want.decode(torch.tensor([3, 4]), torch.tensor([4, 2])))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_what_cannot_be_packed_says_why() -> None:
    from targets.reference.llama import load_llama
    from targets.reference.models import ensure_tiny_folder

    assert can_prepack(load_llama(ensure_tiny_folder(), torch.float16, "cpu")) == \
        "torch.float16 weights"
    bf16 = load_llama(ensure_tiny_folder(), torch.bfloat16, "cpu")
    # the refusal is cached per dtype: an earlier bf16 load in this process answered already
    _dtype_refusal.cache_clear()
    try:
        with mock.patch("targets.reference.models.cpu_has_native_bf16", return_value=False):
            assert can_prepack(bf16) == "bfloat16 on a CPU without AVX512-BF16 or AMX"
    finally:
        _dtype_refusal.cache_clear()


def test_weight_layout_plain_leaves_the_weights_as_loaded() -> None:
    """--weight-layout plain: no packing, neither of a dense model nor of --quantize auto's
    dense copies; a layout that does not exist is refused, naming the option."""
    from targets.reference.models import ModelError, ensure_tiny_folder, load_model
    from targets.reference.quant import QuantLinear, describe_weights

    plain, _ = load_model(ensure_tiny_folder(), "cpu", "float32", layout="plain")
    assert isinstance(plain.model.layers[0].self_attn.q_proj, nn.Linear)
    assert "layout" not in describe_weights(plain)
    for layout, packed in (("plain", False), ("auto", True)):
        hybrid, _ = load_model(ensure_tiny_folder(), "cpu", "float32", "auto", layout=layout)
        layer = hybrid.model.layers[0].mlp.down_proj
        assert isinstance(layer, QuantLinear) and layer.dense is not None
        assert (layer.dense.layout == torch._mkldnn) == packed  # type: ignore[attr-defined]
    with pytest.raises(ModelError, match="--weight-layout 'blocked': expected auto or plain"):
        load_model(ensure_tiny_folder(), "cpu", "float32", layout="blocked")


_NO_FP16 = fp16_refusal()
needs_fp16 = pytest.mark.skipif(_NO_FP16 is not None, reason=f"no fp16w here: {_NO_FP16}")


@needs_fp16
def test_an_fp16_layer_computes_in_float32_on_float16_weights() -> None:
    """Fp16Linear: float32 in and out, the product of the float16-rounded weights in float32
    arithmetic (FBGEMM widens them; only the summation order differs), 2-D or 3-D, with a
    bias; it reads 2 bytes a weight."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=g) * 0.1
    bias = torch.randn(96, generator=g)
    rounded = weight.half().float()
    for layer_bias in (None, bias):
        layer = Fp16Linear(weight, layer_bias)
        for shape in ((1, 64), (16, 64), (200, 64), (1, 7, 64)):
            x = torch.randn(*shape, generator=g)
            got = layer(x)
            assert got.shape == (*shape[:-1], 96) and got.dtype == torch.float32
            torch.testing.assert_close(got, F.linear(x, rounded, layer_bias), rtol=1e-5,
                                       atol=1e-5)
            # and not the full-precision product: the weights really are float16
            assert not torch.allclose(got, F.linear(x, weight, layer_bias), rtol=1e-6,
                                      atol=1e-6)
    assert layer.nbytes == weight.numel() * 2 + bias.nbytes


@needs_fp16
def test_an_fp16_layers_rows_do_not_depend_on_the_batch() -> None:
    """Each row of an Fp16Linear product is the same to the bit whether it is computed alone
    or among others (FBGEMM sums each row in one order at every batch size; oneDNN's packed
    float32 does not): what a request gets does not depend on what it was batched with."""
    g = torch.Generator().manual_seed(1)
    layer = Fp16Linear(torch.randn(200, 96, generator=g) * 0.1, None)
    x = torch.randn(40, 96, generator=g)
    for rows in (2, 7, 16, 40):
        batched = layer(x[:rows])
        assert all(torch.equal(batched[r], layer(x[r:r + 1])[0]) for r in range(rows))


@needs_fp16
def test_dtype_auto_holds_fp16_weights_on_the_cpu_and_says_why() -> None:
    """--dtype auto on the CPU: every projection and the head as Fp16Linear, the model in
    float32 (residual stream, attention, KV cache), /debug/engine's weights say fp16w in
    FBGEMM's layout, half float32's bytes, and why; the decoder's logits are those of the
    float32 model with its projections and head rounded to float16 (within summation
    order), and not those of the unrounded one."""
    from targets.reference.decoder import BatchDecoder
    from targets.reference.models import ensure_tiny_folder, load_model
    from targets.reference.quant import describe_weights

    model, _ = load_model(ensure_tiny_folder(), "cpu", "auto")
    full, _ = load_model(ensure_tiny_folder(), "cpu", "float32")
    layer = model.model.layers[0]
    for proj in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                 layer.mlp.down_proj, model.lm_head):
        assert isinstance(proj, Fp16Linear)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    described, dense = describe_weights(model), describe_weights(full)
    assert described["format"] == "fp16w" and described["layout"] == "fbgemm"
    assert described["chosen"].startswith("--dtype auto: fp16w")
    assert "chosen" not in dense  # --dtype float32 was asked for, nothing chosen
    embed = model.model.embed_tokens.weight
    row = embed.shape[1] * 4  # the embedding row stays float32
    assert described["bytes_per_token"] - row == (dense["bytes_per_token"] - row) // 2
    rounded, _ = load_model(ensure_tiny_folder(), "cpu", "float32", layout="plain")
    # the multiply-adds a token costs do not change with the format: one a weight
    macs = sum(m.weight.numel() for m in rounded.modules() if isinstance(m, nn.Linear))
    assert described["macs_per_token"] == dense["macs_per_token"] == macs > 0
    with torch.no_grad():
        head = nn.Linear(embed.shape[1], embed.shape[0], bias=False)
        head.weight.copy_(rounded.lm_head.weight.half().float())  # untied: the embedding
        rounded.lm_head = head  # stays float32, as it does in the fp16w model
        for block in rounded.model.layers:
            for proj in (*block.self_attn.children(), *block.mlp.children()):
                if isinstance(proj, nn.Linear):
                    proj.weight.copy_(proj.weight.half().float())
    got, want, unrounded = (BatchDecoder(m, 2, 32) for m in (model, rounded, full))
    assert got.dtype == torch.float32
    prompts = [(0, [5, 6, 7, 8], 0), (1, [9, 10], 0)]
    steps = (torch.tensor([3, 4]), torch.tensor([4, 2]))
    for a, b, c in ((got.prefill_many(prompts), want.prefill_many(prompts),
                     unrounded.prefill_many(prompts)),
                    (got.decode(*steps), want.decode(*steps), unrounded.decode(*steps))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(a, c, rtol=1e-4, atol=1e-4)


def test_without_fp16_weights_dtype_auto_serves_float32_and_says_why() -> None:
    """Where FBGEMM's kernel cannot hold the weights (no FBGEMM, no AVX2, weights beyond
    float16's range) --dtype auto serves float32 (in oneDNN's layout) and names the reason;
    --quantize fp16w asked for is an error naming the option; --weight-layout plain packs
    nothing."""
    from targets.reference.models import ModelError, ensure_tiny_folder, load_model
    from targets.reference.quant import describe_weights

    why = "FBGEMM's fp16 GEMM does not run on this CPU (it needs AVX2)"
    with mock.patch("targets.reference.prepack.fp16_refusal", return_value=why):
        model, _ = load_model(ensure_tiny_folder(), "cpu", "auto")
        described = describe_weights(model)
        assert described["format"] == "fp32"
        assert described["chosen"] == f"--dtype auto: float32 (no float16 weights: {why})"
        with pytest.raises(ModelError, match=r"--quantize fp16w: FBGEMM.s fp16 GEMM does not "
                                             r"run on this CPU \(it needs AVX2\); drop it"):
            load_model(ensure_tiny_folder(), "cpu", "auto", "fp16w")
    plain, _ = load_model(ensure_tiny_folder(), "cpu", "auto", layout="plain")
    assert isinstance(plain.model.layers[0].self_attn.q_proj, nn.Linear)
    assert describe_weights(plain)["format"] == "fp32"


def test_weights_beyond_float16s_range_are_refused() -> None:
    from targets.reference.llama import load_llama
    from targets.reference.models import ensure_tiny_folder

    model = load_llama(ensure_tiny_folder(), torch.float32, "cpu")
    if _NO_FP16 is not None:
        assert fp16_refusal(model) == _NO_FP16
        return
    assert fp16_refusal(model) is None
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = 7e4
    assert fp16_refusal(model) == \
        "model.layers.1.mlp.up_proj.weight holds weights beyond float16's range"


@needs_fp16
def test_under_dtype_auto_a_sequence_decodes_the_same_alone_or_batched() -> None:
    """fp16w's projections are batch-invariant and the rest of a decode step works per row:
    a sequence's logits are the same to the bit whether it is decoded alone or beside another
    of a different length. (Float32 in oneDNN's layout differs in the last bits.)"""
    from targets.reference.decoder import BatchDecoder
    from targets.reference.models import ensure_tiny_folder, load_model

    model, _ = load_model(ensure_tiny_folder(), "cpu", "auto")
    seq, other = list(range(30, 60)), list(range(200, 211))
    alone, batched = BatchDecoder(model, 2, 64), BatchDecoder(model, 2, 64)
    alone.prefill_many([(0, seq[:20], 0)])
    batched.prefill_many([(0, seq[:20], 0), (1, other, 0)])
    for step, pos in enumerate(range(20, 30)):
        want = alone.decode(torch.tensor([seq[pos]]), torch.tensor([pos]))[0]
        got = batched.decode(torch.tensor([seq[pos], other[step]]),
                             torch.tensor([pos, len(other) + step]))[0]
        assert torch.equal(got, want), f"step {step}: {(got - want).abs().max().item()}"
