"""Greedy fidelity of a format (dtype, weight quantization) against the float32 model.

Measured two ways on the same prompts, each a chat turn, greedy, up to `max_tokens`:

- free-running: the format generates on its own through the real batched engine; greedy
  outputs part for good at their first different token, so agreement is the share of the
  float32 tokens (an EOS counts as one) that the format reproduces before its first
  difference. One near-tie flipped early costs the rest of an output: this measure compounds.
- teacher-forced: the format's decoder is fed the float32 output token by token (prefill,
  then one batched decode step per position, the worker's own code path) and agreement is the
  share of positions where its greedy choice is float32's next token: how often it would pick
  the same token given the same text.

`python -m targets.reference fidelity --quantize int8 --json PATH` prints both and writes
them (with the weight bytes a token reads) for `llm-chaos bench formats`.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["EOS", "Fidelity", "agreement", "greedy_tokens", "measure", "teacher_forced"]

EOS = -1  # stands for "stopped at EOS" in a token list


@dataclass(frozen=True)
class Fidelity:
    """One format against float32 on the same prompts."""

    format: str
    free_running: float  # share of fp32 tokens kept before the first difference
    identical_outputs: int
    outputs: int
    teacher_forced: float  # share of positions where the greedy choice is fp32's
    positions: int
    weight_bytes: int  # bytes of weights one decode step of one stream reads
    seconds: float


def greedy_tokens(model: Any, tokenizer: Any, prompts: tuple[str, ...] | list[str],
                  max_tokens: int) -> list[list[int]]:
    """Each prompt's greedy token ids from the batched engine, every prompt at once."""
    from .engine import BatchEngine
    from .params import GenerationRequest, Output, SamplingParams

    engine = BatchEngine(model, tokenizer, "fidelity", max_num_seqs=len(prompts))
    tokens: list[list[int]] = [[] for _ in prompts]
    done = threading.Semaphore(0)
    errors: list[str] = []

    def sink(i: int, out: Output) -> None:
        tokens[i].extend(out.token_ids)
        if out.finished:
            if out.error:
                errors.append(out.error)
            if out.finish_reason == "stop":
                tokens[i].append(EOS)
            done.release()

    engine.start()
    try:
        for i, text in enumerate(prompts):
            prompt = engine.encode_chat([{"role": "user", "content": text}])
            engine.submit(GenerationRequest(
                f"r{i}", prompt.token_ids, SamplingParams(max_tokens=max_tokens, temperature=0),
                functools.partial(sink, i), received_at=time.monotonic()))
        for _ in prompts:
            if not done.acquire(timeout=900):
                raise RuntimeError("the engine did not finish every request in 900 s")
    finally:
        engine.stop()
    if errors:
        raise RuntimeError(f"generation failed: {errors[0]}")
    return tokens


def teacher_forced(model: Any, tokenizer: Any, reference: list[list[int]],
                   prompts: tuple[str, ...] | list[str]) -> tuple[float, int]:
    """Feed each reference output to `model`'s decoder and count how often its argmax is the
    reference's next token: (share, positions judged)."""
    import torch

    from .decoder import BatchDecoder
    from .engine import BatchEngine

    encoder = BatchEngine(model, tokenizer, "fidelity", max_num_seqs=1)  # the chat template
    prompt_ids = [encoder.encode_chat([{"role": "user", "content": p}]).token_ids
                  for p in prompts]
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    # the reference with EOS as a real token id: a stop is a choice to get right too
    refs = [[eos if t == EOS else t for t in r] for r in reference]
    longest = max(len(p) + len(r) for p, r in zip(prompt_ids, refs, strict=True))
    decoder = BatchDecoder(model, max_slots=len(prompts), max_len=longest + 1)
    logits = decoder.prefill_many([(i, ids, 0) for i, ids in enumerate(prompt_ids)])
    same = total = 0
    for step in range(max(len(r) for r in refs)):
        choice = logits.argmax(-1).tolist()
        for i, ref in enumerate(refs):
            if step < len(ref):
                same += choice[i] == ref[step]
                total += 1
        # the next input is the reference's token (a finished sequence repeats its last)
        inputs = torch.tensor([ref[min(step, len(ref) - 1)] for ref in refs])
        positions = torch.tensor([len(p) + min(step, len(r) - 1)
                                  for p, r in zip(prompt_ids, refs, strict=True)])
        logits = decoder.decode(inputs, positions)
    return same / total, total


def agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """Share of the reference's tokens that `other` repeats before its first difference."""
    kept = total = 0
    for ref, got in zip(reference, other, strict=True):
        same = next((i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b),
                    min(len(ref), len(got)))
        kept += same
        total += len(ref)
    return kept / total if total else 1.0


def _name(dtype: str, quantize: str | None) -> str:
    return quantize if quantize else {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)


def measure(folder: Path, prompts: tuple[str, ...] | list[str], dtype: str = "bfloat16",
            quantize: str | None = None, max_tokens: int = 64,
            reference: list[list[int]] | None = None) -> tuple[Fidelity, list[list[int]]]:
    """The format `dtype` (+ `quantize`) against float32 on `prompts`; returns the figures and
    the float32 reference (pass it back in to measure another format without redoing it)."""
    from .models import load_model
    from .quant import weight_bytes

    started = time.monotonic()
    if reference is None:
        model, tok = load_model(folder, "cpu", "float32")
        reference = greedy_tokens(model, tok, prompts, max_tokens)
        del model
    model, tok = load_model(folder, "cpu", dtype, quantize)
    own = greedy_tokens(model, tok, prompts, max_tokens)  # the engine calibrates --quantize auto
    # the teacher-forced decoder below runs with the crossover the engine measured (it stays
    # on the model's layers)
    share, positions = teacher_forced(model, tok, reference, prompts)
    return Fidelity(
        format=_name(dtype, quantize), free_running=agreement(reference, own),
        identical_outputs=sum(a == b for a, b in zip(reference, own, strict=True)),
        outputs=len(prompts), teacher_forced=share, positions=positions,
        weight_bytes=weight_bytes(model), seconds=time.monotonic() - started), reference


def main(args: Any) -> int:
    """`python -m targets.reference fidelity`: measure the formats asked for, print, write."""
    from .models import resolve_model

    spec = resolve_model(args.model)
    assert spec.path is not None
    prompts = json.loads(Path(args.prompts).read_text())
    if not isinstance(prompts, list) or not prompts or \
            not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"--prompts {args.prompts}: expected a JSON list of prompt strings")
    reference = None
    results = []
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ("fp32", "bf16", "fp16w", "int8", "int4", "auto")]
    if unknown or not formats:
        raise ValueError(f"--formats {args.formats!r}: expected fp32, bf16, fp16w, int8, int4 "
                         "or auto, comma-separated")
    for fmt in formats:
        dtype, quantize = ("float32", None) if fmt == "fp32" else \
            ("bfloat16", None) if fmt == "bf16" else ("auto", fmt)
        figures, reference = measure(spec.path, prompts, dtype, quantize, args.max_tokens,
                                     reference)
        results.append(asdict(figures))
        print(f"{figures.format}: free-running {figures.free_running:.3f} "
              f"({figures.identical_outputs}/{figures.outputs} identical), teacher-forced "
              f"{figures.teacher_forced:.3f} of {figures.positions} positions, "
              f"{figures.weight_bytes / 1e6:.0f} MB of weights a token, "
              f"{figures.seconds:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0

