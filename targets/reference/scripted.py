"""A decode step's layers as one TorchScript function, for models whose projections are all
Fp16Linear (fp16w, what `--dtype auto` loads on CPUs with AVX2) or all in oneDNN's layout
(prepack.PackedLinear: float32, or bfloat16 where the CPU has it natively).

decoder.py runs a step as ~35 torch calls a layer from Python. At one sequence most of them
are tiny, and the interpreter between them was a large share of the step: SmolLM2 at one
sequence took 14.3 ms a step from Python and 9.9 ms with the same calls in this function
(2-core AVX512-BF16 EPYC, torch 2.13). TorchScript runs the same aten ops in the same order
(the CPU fuser is off, so nothing is fused or reordered): the logits are equal to the bit,
which `test_scripted.py` holds it to.

Both functions mirror BatchDecoder.decode's layer loop line for line; a change there must be
made here too (the test compares them, in fp16w, float32 and bfloat16). Quantized models
(quant.py) and plain layers keep the Python loop.

No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

import functools
from typing import Any

import torch

__all__ = ["fp16w_layers", "onednn_layers"]


def _attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kc: torch.Tensor,
               vc: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, length: int,
               n_heads: int, n_kv: int, head_dim: int,
               bias: torch.Tensor | None) -> torch.Tensor:
    """One layer's attention for one new token a sequence: rotate q and k, store k and v in
    the cache, attend in float32 (`.float()` is a no-op in float32); returns [B, heads * d]
    in qkv's dtype. BatchDecoder.decode's `_rope`, cache writes and `_attend`."""
    b = qkv.shape[0]
    heads = n_heads + n_kv
    part = qkv[:, :heads]
    qk = part * cos + part.roll(head_dim // 2, -1) * sin
    if b == 1:
        kc[0, :, length - 1] = qk[0, n_heads:]
        vc[0, :, length - 1] = qkv[0, heads:]
    else:
        kc[rows, :, positions] = qk[:, n_heads:]
        vc[rows, :, positions] = qkv[:, heads:]
    q = qk[:, :n_heads].view(b, n_kv, n_heads // n_kv, head_dim)
    scores = torch.matmul(q.float(), kc[:b, :, :length].float().transpose(-1, -2)) * (
        head_dim ** -0.5)
    if bias is not None:
        scores = scores + bias
    out = torch.matmul(torch.softmax(scores, dim=-1), vc[:b, :, :length].float())
    return out.to(qkv.dtype).reshape(b, -1)


def _fp16w_layers(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  positions: torch.Tensor, length: int, k_cache: list[torch.Tensor],
                  v_cache: list[torch.Tensor],
                  packs: list[torch.classes.quantized.LinearPackedParamsBase],  # type: ignore[name-defined]
                  norms: list[torch.Tensor], eps: list[float], n_heads: int, n_kv: int,
                  head_dim: int, bias: torch.Tensor | None) -> torch.Tensor:
    """The residual stream [B, hidden] (float32) after every layer: each layer's packs are
    qkv, o, gate_up, down (4 a layer), its norms input and post-attention (2 a layer)."""
    b = x.shape[0]
    hidden = x.shape[1]
    rows = torch.arange(b, device=x.device)
    for i in range(len(k_cache)):
        h = torch.rms_norm(x, [hidden], norms[2 * i], eps[i])
        qkv = torch.ops.quantized.linear_dynamic_fp16(h, packs[4 * i]).view(
            b, n_heads + 2 * n_kv, head_dim)
        o = _attention(qkv, cos, sin, k_cache[i], v_cache[i], rows, positions, length,
                       n_heads, n_kv, head_dim, bias)
        x = x + torch.ops.quantized.linear_dynamic_fp16(o, packs[4 * i + 1])
        h = torch.rms_norm(x, [hidden], norms[2 * i + 1], eps[i])
        gate, up = torch.ops.quantized.linear_dynamic_fp16(h, packs[4 * i + 2]).chunk(2, dim=-1)
        x = x + torch.ops.quantized.linear_dynamic_fp16(torch.nn.functional.silu(gate) * up,
                                                        packs[4 * i + 3])
    return x


def _onednn_layers(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   positions: torch.Tensor, length: int, k_cache: list[torch.Tensor],
                   v_cache: list[torch.Tensor], weights: list[torch.Tensor],
                   biases: list[torch.Tensor | None], norms: list[torch.Tensor],
                   eps: list[float], n_heads: int, n_kv: int, head_dim: int,
                   bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The same loop for projections in oneDNN's layout (prepack.PackedLinear, float32 or
    bfloat16 in `dtype`): the float32 residual stream cast to `dtype` after each norm, and
    attention computed in float32, as in BatchDecoder.decode."""
    b = x.shape[0]
    hidden = x.shape[1]
    rows = torch.arange(b, device=x.device)
    none: list[int | float | complex | None] = []  # _linear_pointwise's post-op scalars
    for i in range(len(k_cache)):
        h = torch.rms_norm(x, [hidden], norms[2 * i], eps[i]).to(dtype)
        qkv = torch.ops.mkldnn._linear_pointwise(h, weights[4 * i], biases[4 * i], "none",
                                                 none, "").view(b, n_heads + 2 * n_kv, head_dim)
        o = _attention(qkv, cos, sin, k_cache[i], v_cache[i], rows, positions, length,
                       n_heads, n_kv, head_dim, bias)
        x = x + torch.ops.mkldnn._linear_pointwise(o, weights[4 * i + 1], biases[4 * i + 1],
                                                   "none", none, "")
        h = torch.rms_norm(x, [hidden], norms[2 * i + 1], eps[i]).to(dtype)
        gate, up = torch.ops.mkldnn._linear_pointwise(h, weights[4 * i + 2], biases[4 * i + 2],
                                                      "none", none, "").chunk(2, dim=-1)
        x = x + torch.ops.mkldnn._linear_pointwise(torch.nn.functional.silu(gate) * up,
                                                   weights[4 * i + 3], biases[4 * i + 3],
                                                   "none", none, "")
    return x


@functools.cache
def fp16w_layers() -> Any:
    """The scripted fp16w loop (compiled once, on first use)."""
    return torch.jit.script(_fp16w_layers)


@functools.cache
def onednn_layers() -> Any:
    """The scripted oneDNN loop (compiled once, on first use)."""
    return torch.jit.script(_onednn_layers)
