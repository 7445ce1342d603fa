"""`llm-chaos demo`: start a reference worker with SmolLM2 and stream a few chats from it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx

from .errors import TargetError
from .launcher import start_worker
from .loadgen.sse import iter_events

__all__ = ["add_parser", "run"]

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
)


def add_parser(sub: Any) -> None:
    """Register `demo` on the top-level parser."""
    p = sub.add_parser("demo", help="stream a few chats from a reference worker and report",
                       description="Start a reference worker (SmolLM2 by default), stream a "
                                   "few chats, print answers, time to first token and tokens/s,"
                                   " and write a report under reports/.")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--report-dir", type=Path, default=Path("reports"))
    p.set_defaults(run=run)


def _stream_chat(client: httpx.Client, url: str, model: str, question: str,
                 max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.monotonic()
    first: float | None = None
    text, tokens, done = [], 0, False
    with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise TargetError(f"worker answered {resp.status_code}: {resp.read().decode()}")
        for event in iter_events(resp.iter_bytes()):
            data = event.data
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    first = first or time.monotonic()
                    text.append(piece)
    end = time.monotonic()
    ttft = (first or end) - start
    decode = end - (first or end)
    return {"question": question, "answer": "".join(text), "ttft_s": round(ttft, 4),
            "e2e_s": round(end - start, 4), "output_tokens": tokens, "done": done,
            "tokens_per_s": round((tokens - 1) / decode, 2) if tokens > 1 and decode > 0 else None}


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every chat streamed to `[DONE]`."""
    run_dir = args.report_dir / time.strftime("demo-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting a reference worker with --model {args.model} ...", flush=True)
    with start_worker(args.model, log_dir=run_dir) as worker:
        ready = worker.wait_ready(timeout=300)
        print(f"worker ready in {ready:.1f} s at {worker.url} (pid {worker.pid})", flush=True)
        results = []
        with httpx.Client(timeout=120) as client:
            for q in QUESTIONS:
                r = _stream_chat(client, worker.url, args.model, q, args.max_tokens)
                results.append(r)
                print(f"\nQ: {q}\nA: {r['answer'].strip()}\n   time to first token "
                      f"{r['ttft_s'] * 1000:.0f} ms, {r['output_tokens']} tokens, "
                      f"{r['tokens_per_s']} tokens/s", flush=True)
    summary = {"model": args.model, "worker_ready_s": round(ready, 3), "chats": results}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| question | TTFT (ms) | tokens | tokens/s |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['question']} | {r['ttft_s'] * 1000:.0f} | {r['output_tokens']} | "
              f"{r['tokens_per_s']} |" for r in results]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"\nreport: {run_dir}/summary.md")
    return 0 if all(r["done"] for r in results) else 1
