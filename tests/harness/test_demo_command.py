"""`llm-chaos demo`: a real worker (the simulated engine here), three streamed chats, each to
`[DONE]`, and the report written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main


def test_demo_streams_every_chat_to_its_end(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--model", "sim", "--max-tokens", "5", "--report-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [c["done"] for c in summary["chats"]] == [True, True, True]
    assert all(c["output_tokens"] == 5 and c["answer"] for c in summary["chats"])
    assert "time to first token" in out and (run_dir / "summary.md").is_file()
