"""The fault state file: the heals of every effect in force, for the guard and `faults clear`.

The harness writes it (atomically: a new file renamed over the old) before each action and
after each revert; the guard only reads it while the harness lives. It holds admin tokens, so it
is private to the user (mode 0600, in a 0700 directory).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .heal import Heal, heal_from_json, heal_to_json

__all__ = ["Entry", "StateFile", "default_state_dir", "read_state"]


def default_state_dir() -> Path:
    """Where runs keep their state files unless told otherwise (one file per run)."""
    return Path(tempfile.gettempdir()) / f"llm-chaos-faults-{os.getuid()}"


@dataclass(frozen=True)
class Entry:
    """One heal in force, with the Unix time by which it must be applied at the latest."""

    id: str
    heal: Heal
    deadline: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "deadline": self.deadline, "heal": heal_to_json(self.heal)}


def read_state(path: Path) -> tuple[dict[str, Any], list[Entry]]:
    """The owner (`pid`, `create_time`) and entries of a state file; UsageError if unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = [Entry(str(e["id"]), heal_from_json(e["heal"]), float(e["deadline"]))
                   for e in data.get("entries", [])]
        return dict(data.get("owner", {})), entries
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read the fault state file {path}: {exc}") from exc


class StateFile:
    """The harness's side of the state file: add an entry before acting, drop it after."""

    def __init__(self, path: Path, owner_pid: int, owner_create_time: float) -> None:
        self.path = path
        self.owner = {"pid": owner_pid, "create_time": owner_create_time}
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write()

    def add(self, heal: Heal, deadline: float) -> Entry:
        entry = Entry(uuid.uuid4().hex[:12], heal, deadline)
        with self._lock:
            self._entries[entry.id] = entry
            self._write()
        return entry

    def remove(self, ids: list[str]) -> None:
        with self._lock:
            for entry_id in ids:
                self._entries.pop(entry_id, None)
            self._write()

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def delete(self) -> None:
        """Remove the file (the run ended with everything reverted)."""
        with self._lock:
            self._entries.clear()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def _write(self) -> None:
        data = {"version": 1, "owner": self.owner, "written_at": time.time(),
                "entries": [e.to_json() for e in self._entries.values()]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
