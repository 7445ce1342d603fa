"""Where the injector records what it does: Jepsen-style history lines (DESIGN.md).

`{"type": "invoke"|"ok"|"fail"|"info", "f": "inject"|"revert", "process": "nemesis",
"time": <Unix seconds>, "value": {...}}`. Any object with `write(lines) -> int` is a recorder;
the load generator's `HistoryWriter` is one, so a run's single history.jsonl gets both.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["JsonlRecorder", "MemoryRecorder", "Recorder"]


class Recorder(Protocol):
    """Takes history lines; returns how many it wrote."""

    def write(self, lines: Iterable[dict[str, Any]]) -> int:
        ...


class MemoryRecorder:
    """Keeps the lines in a list (tests, dry runs)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, lines: Iterable[dict[str, Any]]) -> int:
        new = list(lines)
        self.lines.extend(new)
        return len(new)


class JsonlRecorder:
    """Appends lines to a JSON Lines file, flushed per call (a crash loses nothing written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, lines: Iterable[dict[str, Any]]) -> int:
        text = "".join(json.dumps(line, separators=(",", ":"), default=str) + "\n"
                       for line in lines)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
        return text.count("\n")
