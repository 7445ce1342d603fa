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

`Fp16Linear` is the other packed layer: float16 weights in FBGEMM's layout, multiplied in
float32 (`torch.ops.quantized.linear_dynamic_fp16`, torch's "dynamic fp16" quantization:
each block of weights is widened in registers; AVX2 and up). A float32 model with these
projections (`--quantize fp16w`, and what `--dtype auto` picks on such CPUs) reads half
float32's bytes a token and keeps float32 arithmetic everywhere: on SmolLM2 its greedy
outputs were float32's on every bench prompt, free-running and teacher-forced, where
bfloat16's part from them (0.987 / 0.706), and a decode step took 16.5 / 43 ms at 1 / 16
rows against float32's 36 / 68 and bfloat16's 22 / 33 (2-core AVX512-BF16 EPYC, torch
2.13); with its layer loop in TorchScript (scripted.py), 11.6 / 33.8. Its products are
batch-invariant: each row's sum runs in one order whatever the batch, so a sequence decodes
the same to the bit alone or batched.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Fp16Linear", "PackedLinear", "can_prepack", "fp16_refusal", "joined", "linear",
           "onednn_refusal", "packed_where_supported", "prepack_model"]

FP16_MAX = 65504.0  # the largest finite float16


class _Prepacked(nn.Module):
    """A Linear layer built from a weight and a bias (PackedLinear, Fp16Linear)."""

    @classmethod
    def side_by_side(cls, mods: list[Any]) -> Any:
        """One layer computing the Linear layers `mods` (same input) at once."""
        return cls(*joined(mods))


class PackedLinear(_Prepacked):
    """A Linear layer whose weight is in oneDNN's blocked layout (an opaque tensor: only
    `_linear_pointwise` reads it). Takes and returns the weight's dtype, any leading dims."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # a plain attribute, not a buffer: state_dict, .to() and deepcopy cannot handle it
        self.packed = _pack(weight)
        self.bias = None if bias is None else bias.detach().clone()

    @property
    def nbytes(self) -> int:
        """Bytes of weights (and bias) one call reads."""
        size = self.out_features * self.in_features * self.packed.element_size()
        return int(size + (self.bias.nbytes if self.bias is not None else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.bias)


class Fp16Linear(_Prepacked):
    """A Linear layer with float16 weights in FBGEMM's packed layout, computed in float32
    (see the module docstring): float32 in and out, any leading dims. Build it only where
    `fp16_refusal` is None."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        bias = None if bias is None else bias.detach().float().contiguous()
        # an opaque object as a plain attribute, as PackedLinear's weight (state_dict and
        # .to() cannot handle it); it holds the bias too
        self.packed = torch.ops.quantized.linear_prepack_fp16(
            weight.detach().float().contiguous(), bias)
        self.bias_bytes = 0 if bias is None else bias.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of weights (and bias) one call reads."""
        return self.out_features * self.in_features * 2 + self.bias_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return out


def fp16_refusal(model: Any | None = None) -> str | None:
    """Why `model`'s projections cannot be held as Fp16Linear here (None: they can): torch
    with FBGEMM on an x86 CPU with AVX2, a model on the CPU, and weights within float16's
    range (FBGEMM would clamp larger ones). Without `model`, only whether the kernel runs."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "torch has no FBGEMM here (x86 builds only)"
    if not _fp16_kernel_runs():
        return "FBGEMM's fp16 GEMM does not run on this CPU (it needs AVX2)"
    if model is None:
        return None
    weight = model.model.embed_tokens.weight
    if weight.device.type != "cpu":
        return f"on {weight.device.type}"
    for name, param in model.named_parameters():
        if param.dim() == 2 and param.detach().abs().max().item() > FP16_MAX:
            return f"{name} holds weights beyond float16's range"
    return None


@functools.cache
def _fp16_kernel_runs() -> bool:
    try:
        probe = Fp16Linear(torch.ones(16, 32), None)
        out = probe(torch.ones(2, 32))
    except RuntimeError:
        return False
    return bool(torch.equal(out, torch.full((2, 16), 32.0)))


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


def prepack_model(model: Any, layer: type[_Prepacked] = PackedLinear) -> None:
    """Pack a Llama-family model's projections and head in place (see the module docstring)
    as `layer`s: PackedLinear (oneDNN, the model's dtype) or Fp16Linear (a float32 model's
    weights held in float16). The model's own forward is gone afterwards: only the batched
    decoder runs it. Layers are packed on as many threads as the process may use cores
    (packing releases the GIL: FBGEMM's took 1.2 s for SmolLM2 on one core, 0.6 on two)."""
    jobs: list[tuple[Any, str, tuple[torch.Tensor, torch.Tensor | None]]] = []
    for block in model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        jobs += [(attn, "qkv_proj", joined([attn.q_proj, attn.k_proj, attn.v_proj])),
                 (attn, "o_proj", (attn.o_proj.weight, attn.o_proj.bias)),
                 (mlp, "gate_up_proj", joined([mlp.gate_proj, mlp.up_proj])),
                 (mlp, "down_proj", (mlp.down_proj.weight, mlp.down_proj.bias))]
    jobs.append((model, "lm_head", (model.lm_head.weight, getattr(model.lm_head, "bias", None))))
    with ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        packed = list(pool.map(lambda job: layer(*job[2]), jobs))
    for (owner, name, _), done in zip(jobs, packed, strict=True):
        setattr(owner, name, done)
    for block in model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
