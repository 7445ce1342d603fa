"""Verify an audit log: a pure function over its files' bytes.

What makes a log verify: every record is canonical JSON whose `hash` matches its content;
`seq` runs 1, 2, 3, ... without gaps across the files (rotated `PATH.1`, `PATH.2`, ... then
`PATH`); each `prev` is the previous record's hash; every terminal record answers an earlier
`accepted` one, and none gets two. A line that is not a record is allowed only where a crash
tore it: as the last bytes of the log (the writer has not restarted yet), or closed by the
writer and named by the `recovery` record right after it. Requests accepted but never finished
are in doubt (Jepsen's `info`): reported, not a failure; each `recovery` record must declare
exactly those open at the crash, and none of them may finish later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .chain import GENESIS, TERMINAL, canonical, record_hash

__all__ = ["Problem", "VerifyReport", "log_paths", "verify", "verify_files"]


@dataclass(frozen=True)
class Problem:
    """Why the log does not verify, at one line of one file."""

    file: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        at = f"{self.file} line {self.line}" + (f" (seq {self.seq})" if self.seq else "")
        return f"{at}: {self.message}"


@dataclass
class VerifyReport:
    """Totals, requests in doubt, torn lines and problems found in one log."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    last_seq: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    in_doubt: list[dict[str, Any]] = field(default_factory=list)
    torn: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_broken(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_json(self) -> dict[str, Any]:
        first = self.first_broken
        return {"ok": self.ok, "files": self.files, "records": self.records,
                "last_seq": self.last_seq, "by_type": self.by_type, "requests": self.requests,
                "in_doubt": self.in_doubt, "torn_lines": self.torn,
                "first_broken": None if first is None else {
                    "file": first.file, "line": first.line, "seq": first.seq,
                    "message": first.message},
                "problems": [str(p) for p in self.problems]}

    def summary(self) -> str:
        """Human-readable lines for the terminal."""
        t = self.by_type
        lines = [f"audit log: {len(self.files)} file(s), {self.records} records"
                 f" (last seq {self.last_seq})",
                 f"requests: {self.requests} accepted: "
                 + ", ".join(f"{t.get(k, 0)} {k}" for k in TERMINAL)
                 + f", {len(self.in_doubt)} in doubt"]
        for torn in self.torn:
            how = (f"kept out of the chain, recovery record seq {torn['recovered_by']}"
                   if torn["recovered_by"] else "at the end of the log, not yet recovered")
            lines.append(f"torn line: {torn['file']} line {torn['line']} ({torn['bytes']} "
                         f"bytes), {how}")
        for doubt in self.in_doubt[:10]:
            lines.append(f"in doubt: request {doubt['request_id']} (accepted seq "
                         f"{doubt['accepted_seq']}, "
                         f"{'declared after a crash' if doubt['declared'] else 'still open'})")
        if len(self.in_doubt) > 10:
            lines.append(f"in doubt: ... and {len(self.in_doubt) - 10} more")
        if self.ok:
            lines.append("verdict: the log verifies")
        else:
            lines.append(f"verdict: BROKEN; first broken record: {self.problems[0]}")
            lines += [f"  also: {p}" for p in self.problems[1:10]]
            if len(self.problems) > 10:
                lines.append(f"  ... {len(self.problems) - 10} more problems")
        return "\n".join(lines)


def log_paths(paths: Sequence[Path]) -> list[Path]:
    """The given files plus their rotated siblings (`PATH.1`, `PATH.2`, ...), each once;
    UsageError for one that does not exist."""
    found: list[Path] = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"audit verify: {path} is not a file")
        prefix = path.name + "."
        rotated = sorted((int(p.name[len(prefix):]), p) for p in path.parent.iterdir()
                         if p.name.startswith(prefix) and p.name[len(prefix):].isdigit())
        for candidate in [*(p for _, p in rotated), path]:
            if candidate.resolve() not in {f.resolve() for f in found}:
                found.append(candidate)
    return found


def _first_seq(data: bytes) -> float:
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int):
            return float(record["seq"])
    return float("inf")


def verify(paths: Sequence[Path]) -> VerifyReport:
    """Verify the log made of `paths` (and their rotated siblings)."""
    files = log_paths(paths)
    contents = [(p.name, p.read_bytes()) for p in files]
    return verify_files(contents)


class _Checker:
    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.expected_seq = 1
        self.prev = GENESIS
        self.open: dict[int, str] = {}  # accepted seq -> request id, no terminal yet
        self.declared: set[int] = set()
        self.torn_pending: dict[str, Any] | None = None

    def problem(self, file: str, line: int, seq: int | None, message: str) -> None:
        self.report.problems.append(Problem(file, line, seq, message))

    def line(self, file: str, lineno: int, raw: bytes, complete: bool, last: bool) -> None:
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            self.not_a_record(file, lineno, raw, complete, last)
            return
        torn = self.torn_pending
        if torn is not None and record.get("type") != "recovery":
            self.torn_pending = None
            if record.get("hash") == record_hash(record):
                self.problem(torn["file"], torn["line"], None,
                             "not a valid record, and no recovery record follows it")
            # else: the record after a torn line was changed; it is the one to name
        self.record(file, lineno, raw, record, complete)

    def not_a_record(self, file: str, lineno: int, raw: bytes, complete: bool,
                     last: bool) -> None:
        if self.torn_pending is not None:
            # two bad lines in a row: a crash tears one line at most, so this one was changed
            self.torn_pending = None
            self.problem(file, lineno, None, "not a valid record (changed)")
            return
        entry = {"file": file, "line": lineno, "bytes": len(raw),
                 "sha256": hashlib.sha256(raw).hexdigest(), "recovered_by": None}
        if not complete and last:
            if _complete_json(raw):
                self.problem(file, lineno, None, "changed: a complete value followed by "
                             "other bytes where the line's newline should be")
                return
            self.report.torn.append(entry)  # a crash tore the last write; not yet recovered
            return
        if not complete:
            self.problem(file, lineno, None, "the file ends inside a line, but later files "
                         "follow (a torn line that was never recovered)")
            return
        self.torn_pending = entry

    def record(self, file: str, lineno: int, raw: bytes, record: dict[str, Any],
               complete: bool) -> None:
        report = self.report
        seq = int(record["seq"])
        report.records += 1
        report.last_seq = seq
        kind = str(record.get("type"))
        report.by_type[kind] = report.by_type.get(kind, 0) + 1
        if record.get("hash") != record_hash(record):
            self.problem(file, lineno, seq, "its hash does not match its content "
                         "(the record was changed)")
        elif canonical(record) != raw:
            self.problem(file, lineno, seq, "not in canonical form (bytes were changed)")
        if seq != self.expected_seq:
            why = ("records are missing before it" if seq > self.expected_seq
                   else "it is out of order or repeated")
            self.problem(file, lineno, seq, f"seq {seq} where {self.expected_seq} was "
                         f"expected: {why}")
        elif record.get("prev") != self.prev:
            self.problem(file, lineno, seq, "its prev does not match the hash of the record "
                         "before it (a record before it was changed, removed or swapped)")
        self.expected_seq = seq + 1
        self.prev = str(record.get("hash"))
        if kind == "recovery":
            self.recovery(file, lineno, seq, record)
        elif self.torn_pending is not None:
            self.torn_pending = None
        if kind == "accepted":
            report.requests += 1
            self.open[seq] = str(record.get("request_id"))
        elif kind in TERMINAL:
            self.terminal(file, lineno, seq, record)

    def recovery(self, file: str, lineno: int, seq: int, record: dict[str, Any]) -> None:
        torn = record.get("torn")
        if self.torn_pending is not None:
            pending = self.torn_pending
            self.torn_pending = None
            if not isinstance(torn, dict) or torn.get("sha256") != pending["sha256"] or \
                    torn.get("bytes") != pending["bytes"]:
                self.problem(pending["file"], pending["line"], None,
                             "not a valid record, and the recovery record after it does not "
                             "name these bytes (changed)")
            else:
                pending["recovered_by"] = seq
                self.report.torn.append(pending)
        elif torn:
            self.problem(file, lineno, seq, "names a torn line that is not in the log")
        declared = {int(d.get("accepted_seq", -1)) for d in record.get("in_doubt") or []
                    if isinstance(d, dict)}
        expected = set(self.open) - self.declared
        for missing in sorted(expected - declared):
            self.problem(file, lineno, seq, f"request {self.open[missing]} (accepted seq "
                         f"{missing}) was open at the crash but is not declared in doubt")
        for extra in sorted(declared - expected):
            self.problem(file, lineno, seq, f"declares accepted seq {extra} in doubt, which "
                         "is not an open request")
        self.declared |= declared & expected

    def terminal(self, file: str, lineno: int, seq: int, record: dict[str, Any]) -> None:
        accepted = record.get("accepted_seq")
        if not isinstance(accepted, int) or accepted >= seq:
            self.problem(file, lineno, seq, "a terminal record without an earlier accepted "
                         "record")
        elif accepted in self.declared:
            self.problem(file, lineno, seq, f"finishes request {self.open.get(accepted)} that "
                         "was declared in doubt after a crash (an invented outcome)")
        elif accepted not in self.open:
            self.problem(file, lineno, seq, f"a second terminal record for accepted seq "
                         f"{accepted} (or one for a request not in the log)")
        else:
            del self.open[accepted]

    def end_of_file(self) -> None:
        # the writer closes a torn line and writes its recovery record into the same file
        if self.torn_pending is not None:
            torn = self.torn_pending
            self.problem(torn["file"], torn["line"], None,
                         "not a valid record, and no recovery record follows it")
            self.torn_pending = None

    def finish(self) -> None:
        self.report.in_doubt = [{"accepted_seq": s, "request_id": rid,
                                 "declared": s in self.declared}
                                for s, rid in sorted(self.open.items())]


def _complete_json(raw: bytes) -> bool:
    try:
        json.JSONDecoder().raw_decode(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def verify_files(contents: Iterable[tuple[str, bytes]]) -> VerifyReport:
    """Verify a log given as (file name, bytes) pairs; the files are put in seq order."""
    ordered = sorted(contents, key=lambda c: _first_seq(c[1]))
    report = VerifyReport(files=[name for name, _ in ordered])
    checker = _Checker(report)
    for index, (name, data) in enumerate(ordered):
        lines = data.split(b"\n")
        tail = lines.pop()
        last_file = index == len(ordered) - 1
        for lineno, raw in enumerate(lines, start=1):
            checker.line(name, lineno, raw, complete=True, last=False)
        if tail:
            checker.line(name, len(lines) + 1, tail, complete=False, last=last_file)
        checker.end_of_file()
    checker.finish()
    return report
