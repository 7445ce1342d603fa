"""Dense projections packed in oneDNN's layout at load (targets/reference/prepack.py)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from targets.reference.prepack import PackedLinear, can_prepack, onednn_refusal

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
    with mock.patch("targets.reference.models.cpu_has_native_bf16", return_value=False):
        assert can_prepack(bf16) == "bfloat16 on a CPU without AVX512-BF16 or AMX"


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
