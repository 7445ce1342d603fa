"""Dense projections in oneDNN's own weight layout, packed once at load.

`F.linear` on the CPU hands oneDNN a plain row-major weight, which it reorders into its
blocked layout again on every call: for a decode step's small batches that reordering is a
large share of the time. Packed once (`torch.ops.mkldnn._reorder_linear_weight`, what
torch.compile's CPU freezing does) and multiplied with `_linear_pointwise`, a SmolLM2 decode
step took 0.76x / 0.68x the time at 1 / 16 streams in bfloat16 (same logits to the bit) and
0.70x / 0.69x in float32 (logits within 1e-4: another summation order), torch 2.13, 2-core
AVX512-BF16 EPYC.

Like quantize_model, `prepack_model` joins each layer's q, k and v projections into one
`self_attn.qkv_proj` and gate and up into one `mlp.gate_up_proj` (the decoder computes them
side by side), and removes the old modules: the packed weights replace the plain ones, so
memory stays the same except for a tied head, whose packed copy sits beside the embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["PackedLinear", "can_prepack", "onednn_refusal", "prepack_model"]


class PackedLinear(nn.Module):
    """A Linear layer whose weight is in oneDNN's blocked layout (an opaque tensor: only
    `_linear_pointwise` reads it). Takes and returns the weight's dtype, any leading dims."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        # a plain attribute, not a buffer: state_dict, .to() and deepcopy cannot handle it
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().clone()

    @classmethod
    def side_by_side(cls, mods: list[Any]) -> PackedLinear:
        """One layer computing the Linear layers `mods` (same input) at once."""
        weight = torch.cat([m.weight.detach() for m in mods])
        biases = [m.bias for m in mods]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else weight.new_zeros(m.out_features)
                              for b, m in zip(biases, mods, strict=True)])
        return cls(weight, bias)

    @property
    def nbytes(self) -> int:
        """Bytes of weights (and bias) one call reads."""
        size = self.out_features * self.in_features * self.packed.element_size()
        return int(size + (self.bias.nbytes if self.bias is not None else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias,
                                                               "none", [], "")
        return out

    def for_rows(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The call the decoder makes on rows [n, in] (forward itself)."""
        return self.forward


def can_prepack(model: Any) -> str | None:
    """Why `model`'s projections cannot be packed (None: they can): oneDNN present, on the
    CPU, in float32 or bfloat16, and a packing that works on this CPU."""
    weight = model.model.embed_tokens.weight
    if weight.device.type != "cpu":
        return f"on {weight.device.type}"
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return "torch has no oneDNN here"
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return f"{weight.dtype} weights"
    return onednn_refusal(weight.dtype)


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
