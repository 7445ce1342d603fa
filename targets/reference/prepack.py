"""Dense projections in oneDNN's own weight layout, packed once at load.

`F.linear` on the CPU hands oneDNN a plain row-major weight, which it reorders into its
blocked layout again on every call: for a decode step's small batches that reordering is a
large share of the time. Packed once (`torch.ops.mkldnn._reorder_linear_weight`, what
torch.compile's CPU freezing does) and multiplied with `_linear_pointwise`, a SmolLM2 decode
step took 0.80x / 0.73x the time at 1 / 16 streams in bfloat16 (same logits to the bit) and
0.64x / 0.72x in float32 (logits within 1e-4: another summation order), torch 2.13, 2-core
AVX512-BF16 EPYC; at one bfloat16 stream the packed projections then read their weights at
0.88 of the machine's copy bandwidth.

Like quantize_model, `prepack_model` joins each layer's q, k and v projections into one
`self_attn.qkv_proj` and gate and up into one `mlp.gate_up_proj` (the decoder computes them
side by side), and removes the old modules: the packed weights replace the plain ones. The
cost is memory where the plain weights were the model file's own pages: a float32 SmolLM2
worker's private memory went from ~450 to ~730 MiB at rest (its weights are the safetensors
cache mapped as is, packed they are anonymous memory, and the tied head gets a packed copy
beside the embedding); a bfloat16 worker's, converted at load either way, from ~490 to ~510.
`--weight-layout plain` keeps the plain weights.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PackedLinear", "can_prepack", "joined", "linear", "onednn_refusal",
           "packed_where_supported", "prepack_model"]


class PackedLinear(nn.Module):
    """A Linear layer whose weight is in oneDNN's blocked layout (an opaque tensor: only
    `_linear_pointwise` reads it). Takes and returns the weight's dtype, any leading dims."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # a plain attribute, not a buffer: state_dict, .to() and deepcopy cannot handle it
        self.packed = _pack(weight)
        self.bias = None if bias is None else bias.detach().clone()

    @classmethod
    def side_by_side(cls, mods: list[Any]) -> PackedLinear:
        """One layer computing the Linear layers `mods` (same input) at once."""
        return cls(*joined(mods))

    @property
    def nbytes(self) -> int:
        """Bytes of weights (and bias) one call reads."""
        size = self.out_features * self.in_features * self.packed.element_size()
        return int(size + (self.bias.nbytes if self.bias is not None else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.bias)


def joined(mods: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights and biases of Linear layers with the same input, stacked: one layer
    computing them all, outputs side by side (a missing bias is zeros where others have one)."""
    weight = torch.cat([m.weight.detach() for m in mods])
    biases = [m.bias for m in mods]
    if all(b is None for b in biases):
        return weight, None
    return weight, torch.cat([b.detach() if b is not None else weight.new_zeros(m.out_features)
                              for b, m in zip(biases, mods, strict=True)])


def packed_where_supported(weight: torch.Tensor) -> torch.Tensor:
    """`weight` in oneDNN's layout where `can_prepack` would pack it (for `linear`), else as
    it is: quant.py's dense copies beside int4."""
    if weight.device.type != "cpu" or _dtype_refusal(weight.dtype) is not None:
        return weight
    return _pack(weight)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    # the row-count hint (1) changed nothing measurable at 1, 16 or 200 rows
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(),
                                                                   1)
    return packed


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear for a plain weight or one from `packed_where_supported`."""
    if weight.layout == torch._mkldnn:  # type: ignore[attr-defined]
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return out
    return F.linear(x, weight, bias)


def can_prepack(model: Any) -> str | None:
    """Why `model`'s projections are not packed (None: they are): oneDNN present, on the
    CPU, in float32 or in bfloat16 where the CPU computes it natively, and a packed linear
    that runs here."""
    weight = model.model.embed_tokens.weight
    if weight.device.type != "cpu":
        return f"on {weight.device.type}"
    return _dtype_refusal(weight.dtype)


@functools.cache
def _dtype_refusal(dtype: torch.dtype) -> str | None:
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return "torch has no oneDNN here"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"{dtype} weights"
    from .models import cpu_has_native_bf16

    if dtype == torch.bfloat16 and not cpu_has_native_bf16():
        # emulated there; the packed path is measured only where the CPU computes bfloat16
        return "bfloat16 on a CPU without AVX512-BF16 or AMX"
    return onednn_refusal(dtype)


def onednn_refusal(dtype: torch.dtype) -> str | None:
    """Why a small packed linear in `dtype` fails on this CPU (None: it runs)."""
    try:
        probe = PackedLinear(torch.ones(16, 32, dtype=dtype), None)
        probe(torch.ones(2, 32, dtype=dtype))
    except RuntimeError as exc:
        return f"oneDNN refused a packed {dtype} linear: {exc}"
    return None


def prepack_model(model: Any) -> None:
    """Pack a Llama-family model's projections and head in place (see the module docstring).
    The model's own forward is gone afterwards: only the batched decoder runs it."""
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = PackedLinear.side_by_side([attn.q_proj, attn.k_proj, attn.v_proj])
        attn.o_proj = PackedLinear(attn.o_proj.weight, attn.o_proj.bias)
        mlp.gate_up_proj = PackedLinear.side_by_side([mlp.gate_proj, mlp.up_proj])
        mlp.down_proj = PackedLinear(mlp.down_proj.weight, mlp.down_proj.bias)
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
    model.lm_head = PackedLinear(model.lm_head.weight, getattr(model.lm_head, "bias", None))
