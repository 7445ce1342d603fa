"""Running `llm-chaos bench NAME` in-process, shared by the benchmark tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main


@dataclass
class BenchRun:
    """One benchmark run: its figures and goals (from `--json`) and what it printed."""

    figures: dict[str, Any]  # name -> value (None: not measured)
    measured: dict[str, bool]  # goal name -> whether it was measured
    data: dict[str, Any]  # the whole JSON document
    out: str
    err: str


def run_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> BenchRun:
    """`llm-chaos bench ARGS --json PATH`, which must exit 0."""
    path = tmp_path / "bench.json"
    code = main(["bench", *args, "--json", str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(path.read_text())
    return BenchRun({f["name"]: f["value"] for f in data["figures"]},
                    {g["name"]: g["measured"] for g in data["goals"]},
                    data, captured.out, captured.err)
