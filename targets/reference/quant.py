"""Weight-only quantized projections: fewer bytes read per token, activations in bfloat16.

A CPU decode step at a few streams is bound by the bytes of weights it reads, not by
arithmetic (one stream reads every weight once per token). So the worker may hold its
projection weights as int8 (one scale per output channel) or int4 (an asymmetric scale and
zero point per group of 32 inputs along each row), and multiply them with torch's own
weight-only kernels, `_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`. Both take
bfloat16 activations: their float32 path runs without SIMD (38 ms a token for SmolLM2's layers
against 7 ms in bfloat16 on a 2-core AVX512 Xeon), so a quantized model runs the bfloat16
path of decoder.py (float32 residual stream, float32 rescoring of the head's best candidates).

int8's kernel reads each weight row once per activation row, so it pays at a few streams and
loses at many (SmolLM2's layers, 2-core AVX512 Xeon, milliseconds per step, bf16 / int8
kernel / int8 converted to bf16 then one matmul: 1 row 17 / 8 / 26, 16 rows 18 / 33 / 26,
32 rows 19 / 54 / 29). Above `INT8_ROWS` rows a projection converts its int8 weights to
bfloat16 and runs one matmul instead. int4's kernel has no such cliff (1 row 3.3 ms, 16 rows
20 ms).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FORMATS", "INT4_GROUP", "INT8_ROWS", "QuantLinear", "describe_weights",
           "quantize_model", "weight_bytes"]

FORMATS = ("int8", "int4")
INT8_ROWS = 8  # above this many activation rows int8 converts its weights and runs one matmul
INT4_GROUP = 32  # inputs sharing one int4 scale and zero point


class QuantLinear(nn.Module):
    """A Linear layer (no bias or a bias kept in bfloat16) with weight-only int8 or int4
    weights; `forward` takes and returns bfloat16 (other dtypes are cast on the way in)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"quantized format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        if fmt == "int8":
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.qweight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
            self.scales = scale.to(torch.bfloat16)
        else:
            self.qweight, self.scales = _pack_int4(w)

    @classmethod
    def side_by_side(cls, mods: list[Any], fmt: str) -> QuantLinear:
        """One layer computing `mods` (Linear layers with the same input) at once."""
        weight = torch.cat([m.weight.detach() for m in mods])
        biases = [m.bias for m in mods]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else weight.new_zeros(m.out_features)
                              for b, m in zip(biases, mods, strict=True)])
        return cls(weight, bias, fmt)

    @property
    def nbytes(self) -> int:
        """Bytes of weights and scales a full pass over this layer reads."""
        return self.qweight.nbytes + self.scales.nbytes + (self.bias.nbytes if self.bias
                                                           is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.fmt == "int4":
            out = torch._weight_int4pack_mm_for_cpu(rows, self.qweight, INT4_GROUP, self.scales)
        elif rows.shape[0] <= INT8_ROWS:
            out = torch._weight_int8pack_mm(rows, self.qweight, self.scales)
        else:
            out = F.linear(rows, self.qweight.to(torch.bfloat16)) * self.scales
        if self.bias is not None:
            out = out + self.bias
        return out.view(*shape[:-1], self.out_features)


def _pack_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of `INT4_GROUP` inputs, in the CPU kernel's packed layout:
    (packed weights, [in / group, out, 2] bfloat16 scales and zero points)."""
    out, inp = w.shape
    if inp % INT4_GROUP:
        raise ValueError(f"int4 needs input sizes divisible by {INT4_GROUP}, not {inp}")
    groups = w.view(out, inp // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
    # the kernel computes (q - 8) * scale + zero: so zero is the value of the middle code
    zero = low + 8 * scale
    packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).view(out, inp), 1)
    scales = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return packed, scales.to(torch.bfloat16)


def quantize_model(model: Any, fmt: str) -> None:
    """Quantize a Llama-family model's projections and head in place, from the weights it
    holds (load it in float32 first). Each layer's q, k and v projections become one
    QuantLinear, `self_attn.qkv_proj`, and gate and up one, `mlp.gate_up_proj` (the decoder
    computes them side by side; int4's packed layout cannot be joined after packing); the old
    modules are removed. The embedding stays as it is (a lookup reads one row per token)."""
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = QuantLinear.side_by_side([attn.q_proj, attn.k_proj, attn.v_proj], fmt)
        attn.o_proj = QuantLinear(attn.o_proj.weight, attn.o_proj.bias, fmt)
        mlp.gate_up_proj = QuantLinear.side_by_side([mlp.gate_proj, mlp.up_proj], fmt)
        mlp.down_proj = QuantLinear(mlp.down_proj.weight, mlp.down_proj.bias, fmt)
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
    model.lm_head = QuantLinear(model.lm_head.weight, None, "int8")


def weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step of one stream reads: every projection and the head
    once, plus one embedding row (norm weights are negligible and left out)."""
    total = 0
    for layer in model.model.layers:
        for owner in (layer.self_attn, layer.mlp):
            for child in owner.children():
                total += _layer_bytes(child)
    total += _layer_bytes(model.lm_head)
    embed = model.model.embed_tokens.weight
    return int(total + embed.shape[1] * embed.element_size())


def describe_weights(model: Any) -> dict[str, Any]:
    """What a worker's weights are held in, for /debug/engine: `format` (int8, int4, or the
    dtype's short name) and `bytes_per_token` (weight_bytes; None for an unknown layout)."""
    head = getattr(model, "lm_head", None)
    if isinstance(head, QuantLinear):
        layers = model.model.layers
        fmt = layers[0].mlp.down_proj.fmt if len(layers) else head.fmt
    else:
        embed = model.model.embed_tokens.weight
        fmt = {torch.float32: "fp32", torch.bfloat16: "bf16",
               torch.float16: "fp16"}.get(embed.dtype, str(embed.dtype))
    try:
        size: int | None = weight_bytes(model)
    except AttributeError:
        size = None
    return {"format": fmt, "bytes_per_token": size}


def _layer_bytes(layer: Any) -> int:
    if isinstance(layer, QuantLinear):
        return layer.nbytes
    return int(sum(p.nbytes for p in layer.parameters()))
