"""The fast path: a Llama-family forward pass over a preallocated KV cache.

One batched forward per decode step for every running sequence. Sequences live in cache
slots 0..B-1 (kept compact), so a decode step reads the cache through a view, with no gather.
The weights and sub-modules are the Hugging Face model's own; only the cache and the batching
are ours, because transformers' caches assume one shared position per batch.

In a low precision (bfloat16) the weights and the cache are bfloat16, but the residual stream,
attention scores and the head's best candidates are float32: greedy outputs then keep 82% of
the float32 model's tokens before their first difference, against 60% all in bfloat16
(tests/targets/reference/test_fidelity.py), for no measurable time.
"""

from __future__ import annotations

import itertools
import math
import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .prepack import Fp16Linear, PackedLinear, joined

__all__ = ["BatchDecoder", "UnsupportedModel"]

_SUPPORTED = {"llama", "mistral", "qwen2"}
REFINE = 8  # candidates rescored in float32 by a low-precision model's head


class UnsupportedModel(Exception):
    """The model's architecture is not one the batched decoder implements."""


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed cache that costs memory only where it is written.

    Zeros, not torch.empty: a masked attention weight is exactly 0, but 0 * NaN from recycled
    memory is NaN. On the CPU, a private anonymous mapping gets fresh zero pages lazily, so the
    RSS grows with the tokens actually cached, not with max_slots * max_len. Not numpy.zeros:
    numpy madvises arrays of 4 MiB and more MADV_HUGEPAGE, and then the first write into each
    2 MiB of the cache makes a whole zeroed huge page resident (for SmolLM2 in bfloat16, 8
    (slot, head) rows of 256 KiB): 6 short streams held 326 MiB of cache instead of 25 MiB.
    MADV_NOHUGEPAGE keeps 4 KiB pages even where transparent huge pages are `always`.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(shape) * itemsize
    if device.type != "cpu" or nbytes == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    # MAP_PRIVATE: the default MAP_SHARED would be shmem, counted as shared, not private, memory
    raw = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        raw.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).view(shape)


Projection = Callable[[torch.Tensor], torch.Tensor]


def _side_by_side(mods: list[Any]) -> Projection:
    """One projection computing the Linear layers `mods` at once, outputs concatenated.

    Plain layers become one matrix (one matmul instead of three for q, k and v; the module
    weights become views of it, so no memory is added); others run in turn.
    """
    found = [getattr(m, "weight", None) for m in mods]
    weights = [w.detach() for w in found if isinstance(w, torch.Tensor)]
    if len(weights) != len(mods):
        return lambda x: torch.cat([m(x) for m in mods], dim=-1)
    rows = [w.shape[0] for w in weights]
    weight, bias = joined(mods)
    for m, view in zip(mods, torch.split(weight, rows), strict=True):
        m.weight = nn.Parameter(view, requires_grad=False)
    return lambda x: F.linear(x, weight, bias)


def _direct(module: nn.Module) -> Projection:
    """The projection as a plain call on rows [n, in] in the decoder's dtype: a quantized
    layer's own (`QuantLinear.for_rows`, its kernel itself where nothing chooses), else the
    module's forward. A step makes 4 projection calls a layer (121 for SmolLM2), and
    nn.Module.__call__'s hook dispatch and QuantLinear.forward's checks cost about 4 us each:
    10% of a 1-stream int4 step on a 2-core AVX512-BF16 EPYC."""
    for_rows = getattr(module, "for_rows", None)
    call: Projection = for_rows() if for_rows is not None else module.forward
    return call


@dataclass(frozen=True)
class _Layer:
    """One decoder layer as the fast path runs it."""

    qkv: Projection  # [.., hidden] -> [.., (heads + 2 kv heads) * head_dim]
    o: Projection
    gate_up: Projection  # [.., hidden] -> [.., 2 * inner]
    down: Projection
    norm1: torch.Tensor  # RMSNorm weights in float32, for the float32 residual stream
    norm2: torch.Tensor
    eps: float
    # the qkv, o, gate_up and down modules: where all four are Fp16Linear or all four
    # PackedLinear, the layer can run in one of scripted.py's TorchScript loops
    modules: tuple[Any, ...] = ()

    @classmethod
    def of(cls, layer: Any) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
        eps = ln1.eps if hasattr(ln1, "eps") else ln1.variance_epsilon  # ours, transformers'
        # a quantized or prepacked model (quant.py, prepack.py) has its side-by-side
        # projections joined already
        fused = getattr(attn, "qkv_proj", None)
        qkv = _direct(fused) if fused is not None else _side_by_side(
            [attn.q_proj, attn.k_proj, attn.v_proj])
        fused = getattr(mlp, "gate_up_proj", None)
        gate_up = _direct(fused) if fused is not None else _side_by_side(
            [mlp.gate_proj, mlp.up_proj])
        return cls(qkv, _direct(attn.o_proj), gate_up, _direct(mlp.down_proj),
                   ln1.weight.detach().float(), ln2.weight.detach().float(), float(eps),
                   (getattr(attn, "qkv_proj", None), attn.o_proj,
                    getattr(mlp, "gate_up_proj", None), mlp.down_proj))

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class BatchDecoder:
    """Prefill one sequence into a cache slot; decode all occupied slots in one step."""

    def __init__(self, model: Any, max_slots: int, max_len: int) -> None:
        config = model.config
        if config.model_type not in _SUPPORTED:
            raise UnsupportedModel(
                f"model type {config.model_type!r} is not supported by the batched engine "
                f"(supported: {', '.join(sorted(_SUPPORTED))})"
            )
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = [_Layer.of(layer) for layer in inner.layers]
        self.hidden = config.hidden_size
        self.norm = inner.norm
        self.lm_head = model.lm_head
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.max_slots = max_slots
        self.max_len = max_len
        weight = self.embed.weight
        self.device = weight.device
        self.dtype = weight.dtype
        # a float32 head for rescoring, where the head itself is less precise (load_llama
        # keeps one for bfloat16, load_model for a quantized head)
        self.head_fp32 = getattr(model, "head_fp32", None)
        shape = (max_slots, self.n_kv, max_len, self.head_dim)
        self.k_cache = [_lazy_zeros(shape, self.dtype, self.device) for _ in self.layers]
        self.v_cache = [_lazy_zeros(shape, self.dtype, self.device) for _ in self.layers]
        with torch.inference_mode():
            positions = torch.arange(max_len, device=self.device)[None, :]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = inner.rotary_emb(probe, positions)
        self.cos = cos[0].to(self.dtype)  # [max_len, head_dim]
        # sin with its first half negated: rotate_half(x) * sin = roll(x, half) * this, to the
        # bit (a negation is exact), in one op where rotate_half takes four
        half = self.head_dim // 2
        self.sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1).to(self.dtype)
        self._scripted = self._script()

    def _script(self) -> Any:
        """One of scripted.py's layer loops, as a call taking decode's per-step arguments,
        where every layer is fp16w (float32) or packed in oneDNN's layout (float32 or
        bfloat16), on the CPU; else None. The same ops without the interpreter between them
        (a one-sequence fp16w SmolLM2 step: 9.9 ms against 14.3)."""
        modules = [m for layer in self.layers for m in layer.modules]
        if self.device.type != "cpu" or not modules:
            return None
        from . import scripted

        norms = [w for layer in self.layers for w in (layer.norm1, layer.norm2)]
        eps = [layer.eps for layer in self.layers]
        try:
            if self.dtype == torch.float32 and all(isinstance(m, Fp16Linear) for m in modules):
                fp16w = scripted.fp16w_layers()
                packs = [m.packed for m in modules]
                return lambda *step: fp16w(*step[:7], packs, norms, eps, *step[7:])
            if all(isinstance(m, PackedLinear) for m in modules):
                onednn = scripted.onednn_layers()
                weights, biases = [m.packed for m in modules], [m.bias for m in modules]
                return lambda *step: onednn(*step[:7], weights, biases, norms, eps,
                                            *step[7:], self.dtype)
        except Exception as exc:  # a torch that cannot script it: the Python loop serves
            print(f"decoder: no TorchScript layer loop ({type(exc).__name__}: {exc}); "
                  "running it from Python", file=sys.stderr, flush=True)
        return None

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + x.roll(self.head_dim // 2, dims=-1) * sin

    def _rms(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm of the float32 residual stream, cast to the weights' dtype."""
        return F.rms_norm(x, (self.hidden,), weight, eps).to(self.dtype)

    def prefill(self, slot: int, token_ids: list[int], start: int = 0) -> torch.Tensor:
        """Run `token_ids[start:]` of one sequence into `slot` (positions before `start` are
        already cached there); return the logits of its last position."""
        return self.prefill_many([(slot, token_ids, start)])[0]

    @torch.inference_mode()
    def prefill_many(self, items: list[tuple[int, list[int], int]]) -> torch.Tensor:
        """Prefill several sequences in one forward: `(slot, token_ids, start)` each, with
        positions before `start` already cached in its slot. The projections and MLPs run on
        all new tokens packed together (most of the work); attention runs per sequence over
        its own slot. Returns the logits of each sequence's last position, [len(items), V]."""
        spans = [(slot, start, len(ids)) for slot, ids, start in items]
        packed = [t for _, ids, start in items for t in ids[start:]]
        ids_t = torch.tensor(packed, device=self.device)
        slot_idx = torch.tensor([slot for slot, start, total in spans
                                 for _ in range(start, total)], device=self.device)
        pos_idx = torch.cat([torch.arange(start, total, device=self.device)
                             for _, start, total in spans])
        n = len(packed)
        x = self.embed(ids_t).float()  # [n, hidden]: projections take rows (_direct)
        cos = self.cos[pos_idx][None, None]  # [1, 1, n, d]
        sin = self.sin[pos_idx][None, None]
        masks = [None if start == 0 else
                 torch.arange(total, device=self.device)[None, :]
                 <= torch.arange(start, total, device=self.device)[:, None]
                 for _, start, total in spans]
        heads = self.n_heads + self.n_kv  # query and key heads, rotated together
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.norm1, layer.eps)
            qkv = layer.qkv(h).view(1, n, heads + self.n_kv, self.head_dim).transpose(1, 2)
            qk = self._rope(qkv[:, :heads], cos, sin)
            q, k, v = qk[:, :self.n_heads], qk[:, self.n_heads:], qkv[:, heads:]
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc[slot_idx, :, pos_idx] = k[0].transpose(0, 1)
            vc[slot_idx, :, pos_idx] = v[0].transpose(0, 1)
            outs = []
            offset = 0
            for (slot, start, total), mask in zip(spans, masks, strict=True):
                count = total - start
                qs = q[:, :, offset:offset + count]
                if start == 0:
                    o = F.scaled_dot_product_attention(
                        qs, k[:, :, offset:offset + count], v[:, :, offset:offset + count],
                        is_causal=True, enable_gqa=True)
                else:
                    o = F.scaled_dot_product_attention(
                        qs, kc[slot:slot + 1, :, :total], vc[slot:slot + 1, :, :total],
                        attn_mask=mask, enable_gqa=True)
                outs.append(o)
                offset += count
            o = torch.cat(outs, dim=2)
            x = x + layer.o(o.transpose(1, 2).reshape(n, -1))
            x = x + layer.mlp(self._rms(x, layer.norm2, layer.eps))
        ends = torch.tensor(list(itertools.accumulate(total - start
                                                      for _, start, total in spans))) - 1
        return self._logits(x[ends])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits [B, V] of the last hidden states [B, hidden].

        In a low precision the head's rounding decides near-ties between the top tokens, and
        one flipped greedy choice changes the rest of an output. So with a float32 copy of the
        head (`head_fp32`, kept by load_llama), the `REFINE` best candidates are scored again
        in float32: fp32-exact where greedy decoding looks, at the cost of B x REFINE dot
        products instead of a second full head.
        """
        h = self.norm(x)
        logits: torch.Tensor = self.lm_head(h.to(self.dtype)).float()
        if self.head_fp32 is not None:
            top = logits.topk(REFINE, dim=-1).indices  # [B, k]
            exact = torch.bmm(self.head_fp32[top], h.float()[:, :, None])[:, :, 0]
            logits.scatter_(1, top, exact)
        return logits

    def save_prefix(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of the first `length` cached positions of `slot` (for prefix caching)."""
        return [(kc[slot, :, :length].clone(), vc[slot, :, :length].clone())
                for kc, vc in zip(self.k_cache, self.v_cache, strict=True)]

    def load_prefix(self, slot: int, saved: list[tuple[torch.Tensor, torch.Tensor]],
                    length: int) -> None:
        """Put the first `length` positions of a saved prefix into `slot`."""
        for (k, v), kc, vc in zip(saved, self.k_cache, self.v_cache, strict=True):
            kc[slot, :, :length] = k[:, :length]
            vc[slot, :, :length] = v[:, :length]

    @torch.inference_mode()
    def decode(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One step for slots 0..B-1: token `token_ids[b]` at `positions[b]`; logits [B, V]."""
        b = token_ids.shape[0]
        groups = self.n_heads // self.n_kv
        length = int(positions.max().item()) + 1
        # where each row's new key and value go: one sequence writes with a plain index (a
        # view and a copy, half an index_put's time, 60 of them a step)
        rows, where = (0, length - 1) if b == 1 else (torch.arange(b, device=self.device),
                                                      positions)
        x = self.embed(token_ids).float()  # [B, hidden], the residual stream in float32
        cos = self.cos[positions][:, None, :]  # [B, 1, d]
        sin = self.sin[positions][:, None, :]
        # additive mask over each slot's own length, in float32 like the scores (one
        # sequence attends to its whole length: no mask)
        bias = None
        if b > 1:
            bias = torch.zeros(b, 1, 1, length, device=self.device)
            bias.masked_fill_(torch.arange(length, device=self.device)[None, None, None, :]
                              > positions[:, None, None, None], float("-inf"))
        if self._scripted is not None:  # the loop below, in TorchScript (scripted.py)
            try:
                out = self._scripted(x, cos, sin, positions, length, self.k_cache,
                                     self.v_cache, self.n_heads, self.n_kv, self.head_dim,
                                     bias)
                return self._logits(out)
            except RuntimeError as exc:  # TorchScript's own failure: serve from Python from
                # now on (the loop below rewrites every cache entry this step wrote)
                print(f"decoder: the TorchScript layer loop failed ({exc}); running it from "
                      "Python", file=sys.stderr, flush=True)
                self._scripted = None
        scale = self.head_dim ** -0.5
        heads = self.n_heads + self.n_kv  # query and key heads, rotated together
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.norm1, layer.eps)
            qkv = layer.qkv(h).view(b, heads + self.n_kv, self.head_dim)
            qk = self._rope(qkv[:, :heads], cos, sin)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc[rows, :, where] = qk[:, self.n_heads:]
            vc[rows, :, where] = qkv[:, heads:]
            # query heads grouped under their key/value head: [B, kv, group, d]
            q = qk[:, :self.n_heads].view(b, self.n_kv, groups, self.head_dim)
            o = self._attend(q, kc[:b, :, :length], vc[:b, :, :length], bias, scale)
            x = x + layer.o(o.reshape(b, -1))
            x = x + layer.mlp(self._rms(x, layer.norm2, layer.eps))
        return self._logits(x)

    def timing_step(self, rows: int) -> None:
        """A decode step of `rows` dummy sequences at position 64 of slots 0..rows-1, to time
        the kernels (quant.calibrate). What it writes into the cache is masked from every real
        sequence until that sequence overwrites it: a slot's own steps write each position
        before attending to it."""
        rows = min(rows, self.max_slots)
        position = min(64, self.max_len - 1)
        self.decode(torch.zeros(rows, dtype=torch.long, device=self.device),
                    torch.full((rows,), position, device=self.device))

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                scale: float) -> torch.Tensor:
        """Attention of one new token per sequence, as two batched matmuls in float32.

        Not SDPA: at 16 sequences of 100 cached positions its CPU kernel took 1.35x these
        matmuls in float32 (200 against 148 us a layer, torch 2.13, 2-core AVX512-BF16 EPYC),
        and at one sequence a whole step was no faster with it. q [B, kv, group, d], k and v
        [B, kv, T, d], `bias` [B, 1, 1, T] or None; returns [B, kv, group, d] in q's dtype.
        """
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v.float())
        return out.to(q.dtype)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy a sequence's cache from slot `src` to slot `dst` (compaction after a finish)."""
        for kc, vc in zip(self.k_cache, self.v_cache, strict=True):
            kc[dst, :, :length] = kc[src, :, :length]
            vc[dst, :, :length] = vc[src, :, :length]
