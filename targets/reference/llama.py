"""A torch-only Llama-family model (Llama, Mistral, Qwen2) loaded from a Hugging Face folder.

It exists for start-up time: importing transformers' Llama classes costs about 1.6 s of a
worker's cold start on this CPU, loading these costs nothing. The module and parameter names
are transformers', so the weights load from the same safetensors files and the batched
decoder (decoder.py) drives either model. Anything unusual (another architecture, a rope
scaling type, a non-SiLU activation) is refused, and models.py falls back to transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

__all__ = ["NotSupported", "load_llama"]


class NotSupported(Exception):
    """This folder needs transformers' own model classes."""


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 qkv_bias: bool, o_bias: bool) -> None:
        super().__init__()
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=o_bias)


class Layer(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.self_attn = Attention(cfg.hidden_size, cfg.num_attention_heads,
                                   cfg.num_key_value_heads, cfg.head_dim, cfg.qkv_bias,
                                   cfg.o_bias)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Rotary(nn.Module):
    """Default RoPE: cos/sin of shape [B, T, head_dim] for position ids [B, T]."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # on the CPU whatever the default device: under load_llama's meta-device mode these
        # ops run torch's Python reference kernels, whose first use imports torch._dynamo
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64,
                                            device="cpu").float() / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
        inv_freq: torch.Tensor = self.inv_freq  # type: ignore[assignment]
        freqs = positions[..., None].float() * inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class Body(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        # with its (meta) weight given: Embedding's own random init under the meta-device
        # mode imports torch._dynamo too (with Rotary's, 3.6 s of a worker's 8.5 s cold
        # start; torch 2.13, 2-core AMD EPYC)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = Rotary(cfg.head_dim, cfg.rope_theta)


class CausalLM(nn.Module):
    """Same attribute layout as transformers' *ForCausalLM, which the decoder relies on."""

    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.config = cfg
        self.model = Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.generation_config = SimpleNamespace(eos_token_id=cfg.eos_token_id)
        # the head's weights in float32 when the model runs in a lower precision (decoder.py)
        self.head_fp32: torch.Tensor | None = None


def _config(folder: Path) -> SimpleNamespace:
    raw: dict[str, Any] = json.loads((folder / "config.json").read_text())
    kind = raw.get("model_type")
    if kind not in ("llama", "mistral", "qwen2"):
        raise NotSupported(f"model_type {kind!r}")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise NotSupported(f"rope type {rope.get('rope_type') or rope.get('type')!r}")
    if raw.get("hidden_act", "silu") != "silu":
        raise NotSupported(f"activation {raw.get('hidden_act')!r}")
    if kind == "mistral" and raw.get("sliding_window"):
        raise NotSupported("sliding-window attention")
    heads = raw["num_attention_heads"]
    generation = folder / "generation_config.json"
    eos = raw.get("eos_token_id")
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id", eos)
    return SimpleNamespace(
        model_type=kind,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads", heads),
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", raw.get("rope_theta", 10000.0)),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        qkv_bias=kind == "qwen2" or bool(raw.get("attention_bias", False)),
        o_bias=kind != "qwen2" and bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        eos_token_id=eos,
    )


def load_llama(folder: Path, dtype: torch.dtype, device: str) -> CausalLM:
    """Build the model from `config.json` and load `model.safetensors` into it."""
    from safetensors.torch import load_file

    cfg = _config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise NotSupported("no .safetensors weights")
    with torch.device("meta"):
        model = CausalLM(cfg)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file), device=device))
    if cfg.tie_word_embeddings or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    head_fp32 = state["lm_head.weight"].float() if dtype != torch.float32 else None
    state = {k: v.to(dtype) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or [k for k in unexpected if "rotary" not in k]:
        raise NotSupported(f"weights do not match: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.head_fp32 = head_fp32
    rotary = model.model.rotary_emb
    rotary.inv_freq = rotary.inv_freq.to(device)  # computed on the CPU, never meta
    return model.eval()
