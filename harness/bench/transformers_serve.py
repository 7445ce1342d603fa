"""`transformers serve --continuous-batching` as a baseline server, started by PID, offline.

What the harness needs to know about it (transformers 5.24):
- it loads the model named on its command line from a local folder; with `HF_HUB_OFFLINE=1`
  nothing is fetched, so the folder must hold the config, the weights, the tokenizer and the
  chat template;
- it answers 422 to fields outside OpenAI's schema, so requests carry no `ignore_eos`; a
  `generation_config` field (JSON text) with `eos_token_id: -1` makes it generate exactly
  `max_tokens` tokens (-1 is its own "no EOS" value), greedy with `do_sample: false`;
- it sends `usage` on its last chunk (without being asked: `stream_options` is ignored) and
  ends a stream without `data: [DONE]`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..launcher import ServerProcess, free_port

__all__ = [
    "REQUEST_FIELDS",
    "folder_problems",
    "serve_command",
    "serve_env",
    "start_transformers_serve",
]

# greedy, and no token ends a request before max_tokens (the worker's `ignore_eos`)
REQUEST_FIELDS: Mapping[str, Any] = {
    "generation_config": json.dumps({"do_sample": False, "eos_token_id": -1}),
}


def folder_problems(folder: Path) -> list[str]:
    """What `transformers serve` would miss in `folder` to load it offline (empty: nothing)."""
    problems = [f"no {name}" for name in ("config.json", "tokenizer_config.json")
                if not (folder / name).is_file()]
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        problems.append("no tokenizer.json or tokenizer.model")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        problems.append("no weights (*.safetensors or *.bin)")
    config = folder / "tokenizer_config.json"
    in_config = config.is_file() and "chat_template" in json.loads(config.read_text())
    if not in_config and not (folder / "chat_template.jinja").is_file():
        problems.append("no chat template (chat_template.jinja or tokenizer_config.json)")
    return problems


def serve_command(folder: Path, port: int, *, host: str = "127.0.0.1", dtype: str = "float32",
                  python: str = sys.executable) -> list[str]:
    """The command line: continuous batching, on the CPU, the model pinned to `folder`."""
    # `python -c` instead of the console script: the same interpreter as ours, found without
    # PATH; this is exactly what the `transformers` script runs
    return [python, "-c", "import sys; from transformers.cli.transformers import main; "
                          "sys.argv[0] = 'transformers'; sys.exit(main())",
            "serve", "--continuous-batching", "--device", "cpu", "--dtype", dtype,
            "--host", host, "--port", str(port), "--log-level", "warning", str(folder)]


def serve_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the Hugging Face hub switched off: the model comes from its folder only."""
    return {**base, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def start_transformers_serve(folder: Path, *, log_dir: Path, host: str = "127.0.0.1",
                             dtype: str = "float32") -> ServerProcess:
    """Start `transformers serve --continuous-batching` on a free port (not yet ready)."""
    port = free_port(host)
    return ServerProcess(serve_command(folder, port, host=host, dtype=dtype),
                         f"http://{host}:{port}", log_dir / f"transformers-serve-{port}.log",
                         env=serve_env(os.environ))
