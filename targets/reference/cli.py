"""Command line of the reference target: `python -m targets.reference worker|prepare ...`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (default), tiny (seeded random Llama), sim (simulated engine) "
                        "or a local Hugging Face folder")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--dtype", default="auto",
                   help="auto (the fastest format with float32's greedy outputs: on CPUs "
                        "with AVX2, float32 arithmetic on float16 weights, as --quantize "
                        "fp16w; bfloat16 on CUDA; else float32), float32, bfloat16 or float16")
    p.add_argument("--quantize", default="none",
                   choices=["none", "fp16w", "int8", "int4", "auto"],
                   help="weight-only formats of the projections and head. fp16w: float16 "
                        "weights computed in float32 (FBGEMM's fp16 GEMM, AVX2 and up; "
                        "targets/reference/prepack.py): half float32's bytes a token, its "
                        "greedy outputs. The others are computed in bfloat16 by torch's CPU "
                        "kernels (targets/reference/quant.py) and change greedy outputs: "
                        "int8 (a scale per "
                        "output channel) or int4 (a scale and zero point per 32 inputs; "
                        "SmolLM2's bundled weights are this grid already, GGUF Q4_1). auto: "
                        "int4 beside the --dtype weights, each step taking whichever the "
                        "worker measured faster at its batch size on this CPU")
    p.add_argument("--weight-layout", default="auto", choices=["auto", "plain"],
                   help="auto: dense float32 / bfloat16 projections packed once at load in "
                        "oneDNN's layout where the CPU runs it (targets/reference/prepack.py; "
                        "bfloat16 only with AVX512-BF16 or AMX); plain: as loaded, every call "
                        "through F.linear (--dtype auto then serves float32, not fp16w)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _http_limits(p: argparse.ArgumentParser) -> None:
    from .http_limits import MAX_HEADER_BYTES, MAX_HEADERS, READ_TIMEOUT_S

    p.add_argument("--request-read-timeout", type=_positive_seconds, default=READ_TIMEOUT_S,
                   metavar="S", help="a request's head must arrive within S seconds of its "
                   "first byte (else 408), its body never S seconds without a byte (else the "
                   f"connection closes); heads are limited to {MAX_HEADER_BYTES // 1024} KiB "
                   f"and {MAX_HEADERS} header lines (else 431)")


def build_parser() -> argparse.ArgumentParser:
    """The parser for `python -m targets.reference` (also behind `llm-chaos worker`)."""
    # `llm-chaos serve|worker` is how it is run (that execs `python -m targets.reference`)
    parser = argparse.ArgumentParser(prog="llm-chaos",
                                     description="The reference LLM serving target.")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="serve one model over an OpenAI-compatible API",
                       description="One worker process: an engine behind an OpenAI-compatible "
                                   "HTTP API (/v1/chat/completions, /v1/completions, "
                                   "/v1/models, /health, /metrics).")
    _add_model_options(w)
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8001)
    w.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # the supervisor's
    w.add_argument("--served-model-name", action="append", default=None,
                   help="name(s) clients use in `model` (default: the --model name)")
    w.add_argument("--max-num-seqs", type=int, default=32, help="sequences decoded together")
    w.add_argument("--max-model-len", type=int, default=2048, help="prompt + output tokens")
    w.add_argument("--max-batched-tokens", type=int, default=512,
                   help="prefill tokens admitted per step")
    w.add_argument("--max-waiting", type=int, default=1024,
                   help="queued requests beyond which new ones get 429")
    w.add_argument("--stall-timeout", type=float, default=15.0,
                   help="seconds without engine progress (while busy) before /health fails "
                        "(a floor: it stretches to 10 times the slowest recent step)")
    w.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    w.add_argument("--sim-ttft", default="0.05",
                   help="simulated time to first token: seconds, uniform:LO,HI, normal:M,S, exp:M")
    w.add_argument("--sim-itl", default="0.01", help="simulated inter-token latency (same forms)")
    w.add_argument("--sim-seed", type=int, default=0)
    _http_limits(w)
    w.add_argument("--log-level", default="warning")
    f = sub.add_parser("serve", help="a router and N workers, started and stopped together",
                       description="Serve models through a router in front of worker "
                                   "processes: failover, backpressure, liveness, restarts, "
                                   "autoscaling, memory recycling and a token-protected admin "
                                   "API. SIGTERM/Ctrl-C drains and exits 0.")
    f.add_argument("--model", action="append", default=None,
                   help="model to serve (repeat to serve several side by side; default "
                        "smollm2); requests are routed by their `model`")
    f.add_argument("--workers", type=int, default=1, help="workers per model at start")
    f.add_argument("--min-workers", type=int, default=None,
                   help="autoscaler floor (setting min or max turns autoscaling on)")
    f.add_argument("--max-workers", type=int, default=None, help="autoscaler ceiling")
    f.add_argument("--target-ongoing", type=float, default=2.0,
                   help="autoscaler: ongoing requests per worker to aim for (Ray Serve's rule)")
    f.add_argument("--upscale-delay", type=float, default=1.0,
                   help="seconds the load must call for more workers before adding them")
    f.add_argument("--downscale-delay", type=float, default=5.0,
                   help="seconds the load must call for fewer workers before removing them")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, default=8000)
    f.add_argument("--request-timeout", type=float, default=120.0,
                   help="deadline of one request in seconds, retries included")
    f.add_argument("--max-attempts", type=int, default=3, help="attempts per request (failover)")
    f.add_argument("--resume-streams", action="store_true",
                   help="continue a stream whose worker died on another worker, from the "
                        "tokens already sent (greedy and seeded requests give the same text)")
    f.add_argument("--worker-capacity", type=int, default=16,
                   help="requests the router sends to one worker at once")
    f.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting in the router beyond which new ones get 429")
    f.add_argument("--worker-memory-limit", type=float, default=None, metavar="MIB",
                   help="recycle (drain, restart) a worker whose private memory (RSS less "
                        "shared, file-backed pages such as the mapped weights) exceeds this")
    f.add_argument("--stall-timeout", type=float, default=3.0,
                   help="a busy worker whose engine makes no progress this long is unlive "
                        "(a floor: it stretches to 10 times the worker's slowest recent step)")
    f.add_argument("--worker-threads", type=int, default=0,
                   help="torch threads of each worker (0: the usable cores split between the "
                        "starting workers, at least 1)")
    f.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to let in-flight requests finish")
    f.add_argument("--admin-token", default=None,
                   help="bearer token of /admin (default: generated, written to a 0600 file)")
    f.add_argument("--admin-token-file", type=Path, default=None)
    f.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on /v1/* (401 otherwise), as "
                        "vLLM's --api-key; /health, /metrics and /admin are not affected")
    f.add_argument("--audit-log", type=Path, default=None, metavar="PATH",
                   help="write the audit log (JSON Lines, hash-chained) here; rotated files "
                        "are PATH.1, PATH.2, ... (check with `llm-chaos audit verify PATH`)")
    f.add_argument("--audit-content", choices=["full", "hash", "none"], default="hash",
                   help="prompts and outputs in the audit log: the text (secrets redacted), "
                        "its SHA-256 (default), or neither")
    f.add_argument("--audit-fsync", choices=["group", "off"], default="group",
                   help="group (default): a response ends only after its record is fsynced "
                        "(group commit); off: after write() only, so a power loss or kernel "
                        "crash can lose the last records of answered requests")
    f.add_argument("--audit-max-bytes", type=int, default=64 * 2**20,
                   help="rotate the audit file beyond this size (default 64 MiB)")
    f.add_argument("--audit-fail-open", action="store_true",
                   help="when the audit log fails, keep serving unaudited (counted on "
                        "/metrics) instead of answering 503")
    # test-only: the log's writes fail with ENOSPC after N records (simulated disk full)
    f.add_argument("--audit-fault-after", type=int, default=None, help=argparse.SUPPRESS)
    # test-only: a known defect for `llm-chaos explore` to find (targets/reference/planted.py)
    f.add_argument("--planted-bug", choices=["audit-loss-kill-while-paused"], default=None,
                   help=argparse.SUPPRESS)
    f.add_argument("--log-dir", default=None, help="where worker logs go (default: a temp dir)")
    f.add_argument("--worker-arg", action="append", default=None,
                   help="extra argument passed to every worker, e.g. --worker-arg=--sim-itl=0.02")
    _http_limits(f)
    f.add_argument("--log-level", default="warning")
    p = sub.add_parser("prepare", help="convert/cache a model now (done on first use otherwise)")
    p.add_argument("--model", default="smollm2")
    d = sub.add_parser("fidelity", help="greedy agreement of weight formats with float32",
                       description="Greedy outputs of each format against the float32 model on "
                                   "the given prompts: free-running (tokens before the first "
                                   "difference) and teacher-forced (next-token agreement).")
    d.add_argument("--model", default="smollm2")
    d.add_argument("--formats", default="bf16,int8,int4",
                   help="comma-separated: fp32, bf16, fp16w, int8, int4, auto (--quantize "
                        "auto with --dtype auto; default bf16,int8,int4)")
    d.add_argument("--prompts", required=True, help="a JSON file: a list of prompt strings")
    d.add_argument("--max-tokens", type=int, default=64)
    d.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    d.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    return parser


def make_engine(args: argparse.Namespace) -> Any:
    """Build the engine a worker's options ask for (loading the model)."""
    from .models import load_model, resolve_device, resolve_model

    spec = resolve_model(args.model)
    if spec.kind == "sim":
        from .sim import SimEngine

        return SimEngine(ttft=args.sim_ttft, itl=args.sim_itl, seed=args.sim_seed,
                         max_model_len=args.max_model_len)
    import torch

    from .engine import BatchEngine

    # Only the engine thread runs parallel torch work. Once a second thread has run an OpenMP
    # region, every decode step on this 2-core machine took 1.7x as long (44 ms against 26 ms,
    # SmolLM2 bf16, 16 sequences), so the main thread loads the model on one thread and hands
    # the cores to the engine.
    threads = args.threads if args.threads > 0 else torch.get_num_threads()
    torch.set_num_threads(1)
    assert spec.path is not None
    device = resolve_device(args.device)
    model, tokenizer = load_model(spec.path, device, args.dtype, args.quantize,
                                  layout=args.weight_layout)
    return BatchEngine(model, tokenizer, spec.name, max_num_seqs=args.max_num_seqs,
                       max_model_len=args.max_model_len,
                       max_batched_tokens=args.max_batched_tokens,
                       max_waiting=args.max_waiting, stall_timeout=args.stall_timeout,
                       threads=threads)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .models import ModelError, resolve_model

    try:
        if args.command == "serve":
            from .fleet import serve

            return serve(args)
        if args.command == "fidelity":
            from .fidelity import main as fidelity

            if args.threads > 0:
                import torch

                torch.set_num_threads(args.threads)
            return fidelity(args)
        if args.command == "prepare":
            spec = resolve_model(args.model)
            print(spec.path or spec.name)
            return 0
        engine = make_engine(args)
    except (ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from .api import KEEP_ALIVE_S
    from .http_limits import guarded_protocol
    from .worker import create_app

    app = create_app(engine, args.served_model_name)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE_S,
                            http=guarded_protocol(args.request_read_timeout))
    sockets = None
    if args.fd is not None:
        # a fleet's worker serves on the listening socket its supervisor bound and passed
        # down: the port was held from the moment it was chosen, so no other process (another
        # fleet, an outgoing connection) can take it before the worker listens
        import socket

        sockets = [socket.socket(fileno=args.fd)]
        host, port = sockets[0].getsockname()[:2]
    else:
        host, port = args.host, args.port
    weights = getattr(engine, "weights", None)  # the real engine's (the simulator has none)
    held = "" if not weights else f" weights={weights['format']}" + (
        f" in {weights['layout']}'s layout" if "layout" in weights else "")
    print(f"llm-chaos worker: model={engine.model_name}{held} pid={os.getpid()} "
          f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    return 0 if server.started else 3  # 3: startup failed, as uvicorn.run exits
