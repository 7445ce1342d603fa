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
32 rows 19 / 54 / 29). Above `packed_rows` rows a projection converts its int8 weights and
runs one matmul instead, in bfloat16 where the CPU has it natively and in float32 elsewhere
(emulated bfloat16 cost 3x: on a 2-core AVX2-only EPYC, SmolLM2's layers at 16 rows, kernel /
to bf16 / to fp32: 99 / 331 / 173 ms). Where the two cross depends on the CPU, so the engine
times them (`calibrate`) before serving; until then `INT8_ROWS`. int4's kernel has no such
cliff (1 row 3.3 ms, 16 rows 20 ms on the Xeon).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .prepack import Fp16Linear, PackedLinear, joined, linear, packed_where_supported

__all__ = ["FORMATS", "INT4_GROUP", "INT8_ROWS", "QuantLinear", "calibrate", "describe_weights",
           "needs_calibration", "quantize_model", "set_packed_rows", "weight_bytes"]

FORMATS = ("int8", "int4")
INT8_ROWS = 8  # above this many activation rows int8 converts its weights and runs one matmul
INT4_GROUP = 32  # inputs sharing one int4 scale and zero point


class QuantLinear(nn.Module):
    """A Linear layer with weight-only int8 or int4 weights, and optionally a dense copy.

    The packed path takes and returns bfloat16 (other inputs are cast on the way in). With a
    dense copy (`dense_dtype`, the `--quantize auto` layout) a call of more than
    `packed_rows` rows runs one matmul of the dense weights in their dtype instead: the
    packed kernels win at a few rows and lose at many, and `calibrate` sets where, on the
    CPU at hand. Without one, int8 converts its weights above `packed_rows` rows (`INT8_ROWS`
    until `calibrate` measured it)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str,
                 dense_dtype: torch.dtype | None = None, *, pack_dense: bool = True) -> None:
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
        self.dense: torch.Tensor | None = None
        self.dense_bias: torch.Tensor | None = None
        if dense_dtype is not None:
            dense = weight.detach().to(dense_dtype).contiguous()
            # in oneDNN's layout where dense layers are packed (prepack.py)
            self.dense = packed_where_supported(dense) if pack_dense else dense
            self.dense_bias = None if bias is None else bias.detach().to(dense_dtype)
        # rows up to which the packed kernel runs; beyond, the dense copy (or int8's
        # conversion); `calibrate` measures it for layers with a dense copy
        self.packed_rows = INT8_ROWS if fmt == "int8" and dense_dtype is None else 1 << 30

    @classmethod
    def side_by_side(cls, mods: list[Any], fmt: str, dense_dtype: torch.dtype | None = None,
                     *, pack_dense: bool = True) -> QuantLinear:
        """One layer computing `mods` (Linear layers with the same input) at once."""
        return cls(*joined(mods), fmt, dense_dtype, pack_dense=pack_dense)

    @property
    def switchable(self) -> bool:
        """Whether `packed_rows` chooses between two ways (the packed kernel, or a dense copy
        / int8's conversion) that `calibrate` can time."""
        return self.dense is not None or self.fmt == "int8"

    @property
    def nbytes(self) -> int:
        """Bytes of weights and scales one call on the packed path reads."""
        return self.qweight.nbytes + self.scales.nbytes + (self.bias.nbytes if self.bias
                                                           is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > self.packed_rows and self.dense is not None:
            out = linear(rows.to(self.dense.dtype), self.dense, self.dense_bias)
        else:
            out = self.packed(rows)
            if self.dense is not None:  # as the dense copy would answer: a float32 model's
                out = out.to(self.dense.dtype)  # KV cache and residual stay float32
        return out.view(*shape[:-1], self.out_features)

    def for_rows(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A call for rows [n, in] in bfloat16 (the decoder's): the int4 kernel itself where
        nothing chooses or adds (no dense copy, no bias), else `forward`."""
        if self.fmt != "int4" or self.dense is not None or self.bias is not None:
            return self.forward
        qweight, scales = self.qweight, self.scales
        return lambda rows: torch._weight_int4pack_mm_for_cpu(rows, qweight, INT4_GROUP, scales)

    def packed(self, rows: torch.Tensor) -> torch.Tensor:
        """[n, in] -> [n, out] in bfloat16 through the quantized weights."""
        rows = rows.to(torch.bfloat16)
        if self.fmt == "int4":
            out = torch._weight_int4pack_mm_for_cpu(rows, self.qweight, INT4_GROUP, self.scales)
        elif rows.shape[0] <= self.packed_rows or self.dense is not None:
            out = torch._weight_int8pack_mm(rows, self.qweight, self.scales)
        else:  # int8 converted for one matmul, in bfloat16 where the CPU computes it natively
            dtype = _conversion_dtype()  # (emulated, it cost 3x the float32 matmul on AVX2)
            out = (F.linear(rows.to(dtype), self.qweight.to(dtype))
                   * self.scales.to(dtype)).to(torch.bfloat16)
        if self.bias is not None:
            out = out + self.bias
        return out


def needs_calibration(model: Any) -> bool:
    """Whether some layer chooses by row count between two ways `calibrate` should time."""
    return any(layer.switchable for layer in _quantized(model))


def calibrate(model: Any, step: Callable[[int], Any], max_rows: int, repeats: int = 1) -> int:
    """Time whole decode steps (`step(rows)`) with every switchable layer on its packed kernel
    and with every one on its dense copy (int8 without one: its weights converted for one
    matmul), at growing row counts, on this thread (call it where the engine runs, with its
    threads), and set them to run packed up to the most rows at which the packed steps were
    faster (0: never). Returns that count.

    Whole steps, not each layer alone: a layer timed alone keeps its weights in cache, which
    flatters the dense copy (per-layer timing put SmolLM2's crossover at 4-6 rows; whole
    steps put it past 8), and one step mixing both kinds of kernel ran 10x slower than either
    on a 2-core Xeon."""
    if not needs_calibration(model):
        return 0
    found = 0
    for rows in _row_grid(max_rows):
        packed_s, dense_s = _both(model, functools.partial(step, rows), repeats)
        if packed_s >= dense_s:
            # a loss ends the search: confirm it with more timings, each way in turn, so one
            # disturbed step (another thread holding the GIL, a noisy neighbour) does not
            # leave the dense weights serving every size (it did once: 1 stream at half speed)
            again = _both(model, functools.partial(step, rows), repeats + 2)
            packed_s, dense_s = min(packed_s, again[0]), min(dense_s, again[1])
        if packed_s >= dense_s:
            break
        found = rows
    set_packed_rows(model, found)
    return found


def _both(model: Any, call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best times of `call` with every layer packed and with every layer dense, `repeats`
    timings each, taken in turn (after one untimed call each way)."""
    best = [float("inf"), float("inf")]
    for timed in (False, *([True] * repeats)):
        for i, rows in enumerate((1 << 30, 0)):
            set_packed_rows(model, rows)
            start = time.perf_counter()
            call()
            if timed:
                best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def set_packed_rows(model: Any, rows: int) -> None:
    """Every switchable QuantLinear runs its packed kernel up to `rows` rows."""
    for layer in _quantized(model):
        if layer.switchable:
            layer.packed_rows = rows


@functools.cache
def _conversion_dtype() -> torch.dtype:
    from .models import cpu_has_native_bf16

    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def _row_grid(max_rows: int) -> list[int]:
    """1, 4, 8, 12, 16, 24, 32, 48, ... up to max_rows: one row, then steps of a few rows
    where crossovers fall, then half-octaves."""
    grid, step = [1], 4
    while step <= max_rows:
        grid += [r for r in (step, step + step // 2) if r <= max_rows]
        step *= 2
    return grid


def _quantized(model: Any) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


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


def quantize_model(model: Any, fmt: str, dense_dtype: torch.dtype | None = None, *,
                   pack_dense: bool = True) -> None:
    """Quantize a Llama-family model's projections and head in place, from the weights it
    holds (load it in float32 first). Each layer's q, k and v projections become one
    QuantLinear, `self_attn.qkv_proj`, and gate and up one, `mlp.gate_up_proj` (the decoder
    computes them side by side; int4's packed layout cannot be joined after packing); the old
    modules are removed. The head is in `fmt` too (the decoder rescores its best candidates in
    float32, so its rounding barely shows: an int4 head instead of int8 left greedy outputs
    unchanged on the bench's 16 prompts and made a step 8-13% faster at 1-32 rows on a 2-core
    AVX512-BF16 EPYC). `dense_dtype`: keep a dense copy of every layer in that dtype too (see
    QuantLinear; `calibrate` then decides which runs; `pack_dense`: in oneDNN's layout where
    prepack.py would pack it). The embedding stays as it is (a lookup reads one row per
    token)."""
    options: dict[str, Any] = {"fmt": fmt, "dense_dtype": dense_dtype, "pack_dense": pack_dense}

    def one(mod: Any) -> QuantLinear:
        return QuantLinear(mod.weight, getattr(mod, "bias", None), **options)

    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = QuantLinear.side_by_side([attn.q_proj, attn.k_proj, attn.v_proj],
                                                 **options)
        attn.o_proj = one(attn.o_proj)
        mlp.gate_up_proj = QuantLinear.side_by_side([mlp.gate_proj, mlp.up_proj], **options)
        mlp.down_proj = one(mlp.down_proj)
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
    model.lm_head = one(model.lm_head)


def _projections(model: Any) -> Iterator[Any]:
    """Every projection of every layer, in whatever format it is held, and the head."""
    for layer in model.model.layers:
        for owner in (layer.self_attn, layer.mlp):
            yield from owner.children()
    yield model.lm_head


def weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step of one stream reads: every projection and the head
    once, plus one embedding row (norm weights are negligible and left out)."""
    embed = model.model.embed_tokens.weight
    return int(sum(_layer_bytes(m) for m in _projections(model))
               + embed.shape[1] * embed.element_size())


def weight_macs(model: Any) -> int:
    """Multiply-adds of weights one token costs: every projection and the head, one weight
    each (attention's, which grow with the context, and the norms are left out). The same in
    every format: the compute bound of a step of many streams is a CPU's rate over this."""
    return int(sum(m.in_features * m.out_features for m in _projections(model)))


def describe_weights(model: Any) -> dict[str, Any]:
    """What a worker's weights are held in, for /debug/engine: `format` (int8, int4, fp16w,
    the dtype's short name, or e.g. `int4+bf16` for packed weights with a dense copy),
    `bytes_per_token` (weight_bytes; None for an unknown layout), `layout`: onednn or
    fbgemm where the projections were packed at load (prepack.py), `chosen`: what
    `--dtype auto` chose and why, `macs_per_token` (weight_macs), and, where layers choose
    (a dense copy, or int8), `packed_rows`: up to how many rows a step runs the packed
    kernels."""
    embed = model.model.embed_tokens.weight
    dense = {torch.float32: "fp32", torch.bfloat16: "bf16",
             torch.float16: "fp16"}.get(embed.dtype, str(embed.dtype))
    layers = _quantized(model)
    described: dict[str, Any] = {"format": dense}
    if layers:
        fmt = layers[0].fmt
        hybrid = layers[0].dense is not None
        described["format"] = f"{fmt}+{dense}" if hybrid else fmt
        switchable = [layer for layer in layers if layer.switchable]
        if switchable:  # the dense copies, or int8's layers (the head among them)
            described["packed_rows"] = switchable[0].packed_rows
    if any(isinstance(m, PackedLinear) for m in model.modules()):
        described["layout"] = "onednn"  # prepacked at load (prepack.py)
    if any(isinstance(m, Fp16Linear) for m in model.modules()):
        described["format"], described["layout"] = "fp16w", "fbgemm"
    choice = getattr(model, "format_choice", None)
    if choice:
        described["chosen"] = choice
    try:
        described["bytes_per_token"] = weight_bytes(model)
    except AttributeError:
        described["bytes_per_token"] = None
    try:
        described["macs_per_token"] = weight_macs(model)
    except AttributeError:
        described["macs_per_token"] = None
    return described


def _layer_bytes(layer: Any) -> int:
    nbytes = getattr(layer, "nbytes", None)  # QuantLinear, prepack.PackedLinear
    if isinstance(nbytes, int):
        return nbytes
    return int(sum(p.nbytes for p in layer.parameters()))
