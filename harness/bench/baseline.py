"""Reference lines from transformers itself, measured in their own process.

`python -m harness.bench.baseline --request IN.json --out OUT.json` loads a local Hugging Face
folder (in the request's dtype and on its device: float32 and the CPU unless it says otherwise)
and times, on the same chat prompts the worker gets (same template, same token ids):
- `generate_batch`: transformers' continuous batching with paged attention, every prompt
  submitted at once, EOS disabled so each request makes exactly `max_new_tokens`;
- `static_generate`: `model.generate` on one left-padded batch, EOS suppressed by
  `min_new_tokens`, greedy.
Each mode runs once untimed (small) to warm up, then `rounds` timed runs. The parent side,
`run_baseline`, spawns it and forwards its log lines as progress.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TargetError

__all__ = ["MODES", "BaselineRun", "run_baseline"]

MODES = ("generate_batch_default", "generate_batch", "static_generate")
_PAGE_SIZE = 256  # ContinuousBatchingConfig's default


@dataclass(frozen=True)
class BaselineRun:
    """One mode's timed runs over the prompts: wall seconds each, tokens per run, texts."""

    mode: str
    walls: tuple[float, ...]
    output_tokens: int
    texts: tuple[str, ...]
    detail: str


def run_baseline(folder: Path, prompts: Sequence[str], max_new_tokens: int, *,
                 modes: Sequence[str] = MODES, rounds: int = 1, dtype: str = "float32",
                 device: str = "cpu",
                 progress: Callable[[str], None] | None = None) -> dict[str, BaselineRun]:
    """Run the baselines in a child process, the model in `dtype` (a torch dtype's name:
    float32, bfloat16) on `device` (cpu, cuda); raise TargetError when it fails."""
    with tempfile.TemporaryDirectory(prefix="llm-chaos-baseline-") as tmp:
        request = Path(tmp) / "request.json"
        out = Path(tmp) / "result.json"
        request.write_text(json.dumps({"folder": str(folder), "prompts": list(prompts),
                                       "max_new_tokens": max_new_tokens, "modes": list(modes),
                                       "rounds": rounds, "dtype": dtype, "device": device}))
        cmd = [sys.executable, "-m", "harness.bench.baseline", "--request", str(request),
               "--out", str(out)]
        tail: collections.deque[str] = collections.deque(maxlen=30)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True) as child:
            assert child.stdout is not None
            for line in child.stdout:
                line = line.rstrip()
                tail.append(line)
                if progress is not None and line.startswith("[baseline]"):
                    progress(line[len("[baseline] "):])
            code = child.wait()
        if code != 0 or not out.exists():
            raise TargetError(f"the transformers baseline failed (exit {code}):\n"
                              + "\n".join(tail))
        data = json.loads(out.read_text())
    return {mode: BaselineRun(mode, tuple(r["walls"]), int(r["output_tokens"]),
                              tuple(r["texts"]), str(r["detail"]))
            for mode, r in data.items()}


# -- the child process ------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[baseline] {message}", file=sys.stderr, flush=True)


def _transformers() -> Any:
    # transformers' own annotations are partial (untyped calls under --strict): use it untyped
    return importlib.import_module("transformers")


def _generate_batch_default(model: Any, tok: Any, inputs: list[list[int]], n: int,
                            rounds: int) -> dict[str, Any]:
    """generate_batch as transformers ships it: no cache configuration of ours. One round:
    each call sizes its paged cache to most of the free memory, which costs seconds."""
    return _generate_batch(model, tok, inputs, n, 1, sized=False)


def _generate_batch(model: Any, tok: Any, inputs: list[list[int]], n: int,
                    rounds: int, sized: bool = True) -> dict[str, Any]:
    tf = _transformers()
    # eos_token_id=-1 is how continuous batching disables EOS; greedy like the worker.
    config = tf.GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=-1,
                                 pad_token_id=tok.pad_token_id)
    # Left to itself, the paged cache takes 90% of free memory on the CPU and every call
    # spends seconds filling index tensors and an attention mask of that size; sized to the
    # workload (every prompt prefilled in one step) it is the fairer, faster baseline.
    pages_per_request = -(-(max(map(len, inputs)) + n) // _PAGE_SIZE)

    def cb_config() -> Any:
        return tf.ContinuousBatchingConfig(
            page_size=_PAGE_SIZE, num_blocks=2 * len(inputs) * pages_per_request,
            max_batch_tokens=sum(map(len, inputs)) + len(inputs))

    def once(tokens: int) -> tuple[float, list[Any]]:
        start = time.perf_counter()
        extra = {"continuous_batching_config": cb_config()} if sized else {}
        results = model.generate_batch(inputs, generation_config=config,
                                       max_new_tokens=tokens, **extra)
        wall = time.perf_counter() - start
        outs = list(results.values())
        # generate_batch logs and swallows its own errors; a short result is a failure here
        bad = [o for o in outs if o.error is not None or len(o.generated_tokens) != tokens]
        if len(outs) != len(inputs) or bad:
            raise RuntimeError(f"generate_batch returned {len(outs)} of {len(inputs)} "
                               f"results, {len(bad)} failed or short")
        return wall, outs

    _log("generate_batch: warm-up")
    once(min(4, n))
    walls: list[float] = []
    outs: list[Any] = []
    for i in range(rounds):
        wall, outs = once(n)
        walls.append(wall)
        _log(f"generate_batch: round {i + 1}/{rounds}: {len(inputs) * n / wall:.1f} tokens/s")
    texts = [tok.decode(o.generated_tokens, skip_special_tokens=True) for o in outs]
    cache = (f"cache of {2 * len(inputs) * pages_per_request} pages" if sized
             else "transformers' default cache configuration")
    return {"walls": walls, "output_tokens": len(inputs) * n, "texts": texts,
            "detail": f"{len(inputs)} requests submitted at once, paged attention, {cache}"}


def _static_generate(model: Any, tok: Any, inputs: list[list[int]], n: int,
                     rounds: int) -> dict[str, Any]:
    import torch

    tok.padding_side = "left"
    batch = tok.pad({"input_ids": inputs}, padding=True, return_tensors="pt").to(model.device)
    width = batch["input_ids"].shape[1]

    def once(tokens: int) -> tuple[float, Any]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        return time.perf_counter() - start, out

    _log("static generate: warm-up")
    once(min(4, n))
    walls: list[float] = []
    out: Any = None
    for i in range(rounds):
        wall, out = once(n)
        walls.append(wall)
        _log(f"static generate: round {i + 1}/{rounds}: {len(inputs) * n / wall:.1f} tokens/s")
    texts = [tok.decode(row[width:], skip_special_tokens=True) for row in out]
    return {"walls": walls, "output_tokens": len(inputs) * n, "texts": texts,
            "detail": f"one left-padded batch of {len(inputs)}"}


def _child(request_path: Path, out_path: Path) -> int:
    request = json.loads(request_path.read_text())
    start = time.perf_counter()
    import torch

    tf = _transformers()
    tf.utils.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    folder = request["folder"]
    dtype = request.get("dtype", "float32")
    device = request.get("device", "cpu")
    tok = tf.AutoTokenizer.from_pretrained(folder)
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model = model.to(device).eval()
    # the worker's tokenization of a chat: the template's text, no extra special tokens
    inputs = [tok(tok.apply_chat_template([{"role": "user", "content": p}],
                                          add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"] for p in request["prompts"]]
    _log(f"loaded {folder} ({dtype}, {device}) in {time.perf_counter() - start:.1f} s, "
         f"{torch.get_num_threads()} torch threads")
    runners = {"generate_batch_default": _generate_batch_default,
               "generate_batch": _generate_batch, "static_generate": _static_generate}
    result = {mode: runners[mode](model, tok, inputs, request["max_new_tokens"],
                                  request["rounds"]) for mode in request["modes"]}
    out_path.write_text(json.dumps(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(prog="python -m harness.bench.baseline")
    parser.add_argument("--request", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return _child(args.request, args.out)


if __name__ == "__main__":
    sys.exit(main())
