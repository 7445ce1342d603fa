"""The router's audit log: write-ahead, hash-chained, group-committed JSON Lines.

One `accepted` record per request before it is dispatched, and exactly one terminal record
(`completed`, `failed`, `rejected`, `cancelled` or `timeout`) that is on disk before the last
byte of the response leaves the router. Records carry `seq`, `prev` (the previous record's
hash) and `hash` (SHA-256 over the record's canonical JSON without `hash`); the chain goes on
across size-rotated files (`PATH.1`, `PATH.2`, ... are older, `PATH` is the active file) and
across crashes: a torn last line is closed with a newline, kept out of the chain and named by
the `recovery` record that follows it, together with the requests left in doubt.

One writer thread takes every record queued since its last write, writes them with one
`write()` and one `fsync()` (group commit), then wakes the requests waiting on them.
`harness/audit/chain.py` holds the same canonical-JSON rule for the verifier (the target never
imports the harness); a test checks the two agree.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import ApiError, decode_object, sse_data

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditSettings",
    "AuditUnavailable",
    "RequestTrail",
    "canonical",
    "log_files",
    "record_hash",
    "redact",
    "register_metrics",
    "text_sha256",
]

GENESIS = "0" * 64
CONTENT_POLICIES = ("full", "hash", "none")
FSYNC_MODES = ("group", "off")
TERMINAL = ("completed", "failed", "rejected", "cancelled", "timeout")


def canonical(record: Mapping[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, ASCII only."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the record's canonical JSON without its own `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})
                          ).hexdigest()


def text_sha256(text: str) -> str:
    """SHA-256 (hex) of the exact UTF-8 bytes of `text`, as a client would compute it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# Credentials are replaced before anything reaches the file, whatever the content policy.
_SECRET = re.compile(
    r"(?i)(?:authorization|proxy-authorization)\s*[:=]\s*(?:(?:bearer|basic|token)\s+)?\S+"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}"
    r"|\b(?:hf|gh[pousr]|glpat|xox[abprs])[_-][A-Za-z0-9_-]{10,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bAIza[0-9A-Za-z_-]{30,}"
    r"|(?i:api[_-]?key|secret|password|token)\s*[:=]\s*[\"']?[^\s\"',}]{6,}"
)
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """`text` with authorization values and anything that looks like an API key replaced."""
    return _SECRET.sub(REDACTED, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # canonical JSON has no NaN or Infinity
    return value


class AuditUnavailable(Exception):
    """The audit log cannot take records (disk full, I/O error); requests are refused."""


@dataclass(frozen=True)
class AuditSettings:
    """`serve --audit-*` options."""

    path: Path
    content: str = "hash"
    fsync: str = "group"
    max_bytes: int = 64 * 2**20
    fail_open: bool = False
    fault_after: int | None = None  # test-only: writes fail (ENOSPC) after this many records

    def __post_init__(self) -> None:
        if self.content not in CONTENT_POLICIES:
            raise ValueError(f"--audit-content must be one of {', '.join(CONTENT_POLICIES)}")
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"--audit-fsync must be one of {', '.join(FSYNC_MODES)}")
        if self.max_bytes < 4096:
            raise ValueError("--audit-max-bytes must be 4096 or more")


def log_files(path: Path) -> list[Path]:
    """The files of one log, oldest first: rotated `PATH.N` by N, then `PATH` if it exists."""
    rotated: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        prefix = path.name + "."
        for entry in path.parent.iterdir():
            suffix = entry.name[len(prefix):]
            if entry.name.startswith(prefix) and suffix.isdigit():
                rotated.append((int(suffix), entry))
    files = [p for _, p in sorted(rotated)]
    if path.exists():
        files.append(path)
    return files


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(line: bytes) -> dict[str, Any] | None:
    """A complete, untampered-looking record, or None."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return None
    return record if record.get("hash") == record_hash(record) else None


@dataclass
class _Recovered:
    seq: int = 0
    hash: str = GENESIS
    last_type: str | None = None
    torn: dict[str, Any] | None = None
    in_doubt: list[dict[str, Any]] | None = None
    next_index: int = 1


class AuditLog:
    """The writer: `append` sequences a record, `durable` waits until it is on disk.

    Records appended during one turn of the event loop go out in one `write()` at the end of
    that turn, or as soon as a request waits on one, on the loop itself (page-cache writes
    take microseconds); `fsync` runs on one helper thread, only when some request waits for
    durability, and covers everything written before it started, so concurrent requests share
    it (group commit). A record nobody waits for (`accepted`) rides along with the next fsync.
    """

    def __init__(self, settings: AuditSettings, clock: Callable[[], float] = time.time,
                 alert: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.alert = alert or (lambda m: print(f"llm-chaos serve: ALERT: {m}", file=sys.stderr,
                                               flush=True))
        self.failure: str | None = None
        self.unaudited = 0  # requests served without their records (fail-open only)
        self.lose_completed = 0  # test-only: planted bug (planted.py) drops these
        self.records = 0
        self.batches = 0  # fsyncs (group commits)
        self._seq = 0
        self._prev = GENESIS
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._closed = False
        self._count = 0  # records handed to write()
        self._written = 0  # highest seq written
        self._durable = 0  # highest seq on disk (written, with --audit-fsync off)
        self._syncing = False
        self._rotate_due = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "audit-fsync")
        self._fd = -1
        self._size = 0
        self._next_index = 1

    @property
    def durable_seq(self) -> int:
        """The highest seq known to be on disk."""
        return self._durable

    # -- opening and recovery -----------------------------------------------------------------

    def open(self) -> dict[str, Any]:
        """Recover the chain's end from the files on disk, write a `start` or `recovery`
        record, and start the writer thread. Returns that first record."""
        path = self.settings.path
        path.parent.mkdir(parents=True, exist_ok=True)
        found = self._recover(path)
        self._seq, self._prev, self._next_index = found.seq, found.hash, found.next_index
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        created = not path.exists()
        self._fd = os.open(path, flags, 0o600)
        if created:
            _fsync_dir(path.parent)
        self._size = os.fstat(self._fd).st_size
        if found.last_type is None:
            first = self._make("start", {"recovered": False})
        elif found.last_type == "shutdown" and found.torn is None:
            first = self._make("start", {"recovered": False, "previous_seq": found.seq})
        else:
            first = self._make("recovery", {"previous_seq": found.seq, "torn": found.torn,
                                            "in_doubt": found.in_doubt or []})
        self._write([first[1]])
        os.fsync(self._fd)
        self._durable = self._written = first[0]
        record: dict[str, Any] = json.loads(first[1])
        return record

    def _recover(self, path: Path) -> _Recovered:
        found = _Recovered()
        files = log_files(path)
        indices = [int(p.name.rsplit(".", 1)[1]) for p in files if p != path]
        found.next_index = max(indices, default=0) + 1
        open_requests: dict[int, str] = {}
        declared: set[int] = set()
        for file in files:
            data = file.read_bytes()
            lines = data.split(b"\n")
            tail = lines.pop()  # b"" when the file ends with a newline
            for line in lines:
                record = _parse(line)
                if record is not None:
                    self._track(record, found, open_requests, declared)
            if tail and file == path:
                record = _parse(tail)
                with open(file, "ab") as fh:  # close the last line either way
                    fh.write(b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                if record is not None:  # complete but for its newline
                    self._track(record, found, open_requests, declared)
                else:
                    found.torn = {"file": file.name, "offset": len(data) - len(tail),
                                  "bytes": len(tail),
                                  "sha256": hashlib.sha256(tail).hexdigest()}
        found.in_doubt = [{"accepted_seq": s, "request_id": rid}
                          for s, rid in sorted(open_requests.items()) if s not in declared]
        return found

    @staticmethod
    def _track(record: dict[str, Any], found: _Recovered, open_requests: dict[int, str],
               declared: set[int]) -> None:
        found.seq, found.hash = record["seq"], record["hash"]
        found.last_type = str(record.get("type"))
        if found.last_type == "accepted":
            open_requests[record["seq"]] = str(record.get("request_id"))
        elif found.last_type in TERMINAL:
            open_requests.pop(record.get("accepted_seq", -1), None)
        elif found.last_type == "recovery":
            declared.update(int(d["accepted_seq"]) for d in record.get("in_doubt") or [])

    # -- appending ----------------------------------------------------------------------------

    def _make(self, type_: str, fields: Mapping[str, Any]) -> tuple[int, bytes]:
        self._seq += 1
        record = {"seq": self._seq, "prev": self._prev, "type": type_,
                  "time": round(self.clock(), 6), **_scrub(dict(fields))}
        digest = hashlib.sha256(canonical(record)).hexdigest()
        record["hash"] = digest
        self._prev = digest
        self.records += 1
        return self._seq, canonical(record) + b"\n"

    def append(self, type_: str, fields: Mapping[str, Any]) -> int:
        """Sequence one record and queue it for this loop turn's write; its seq. Raises
        AuditUnavailable once the log has failed (fail-closed); returns 0 then when failing
        open."""
        if self.failure is not None:
            if self.settings.fail_open:
                return 0
            raise AuditUnavailable(self.failure)
        if self._closed:
            raise AuditUnavailable("the audit log is closed")
        seq, line = self._make(type_, fields)
        self._pending.append(line)
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (start-up, shutdown): write now
                self._flush()
            else:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        return seq

    async def durable(self, seq: int) -> None:
        """Return once record `seq` is on disk; raise AuditUnavailable if it never will be
        (nothing raised when failing open)."""
        if seq <= self._durable:
            return
        if self.failure is not None:
            if not self.settings.fail_open:
                raise AuditUnavailable(self.failure)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        if seq <= self._written:
            self._sync()
        elif self._flush_scheduled:
            # someone waits on it now: write this turn's records at once rather than at the
            # end of the turn, so the fsync starts a loop turn earlier (the scheduled flush
            # then finds nothing left)
            self._flush()
        await future

    async def commit(self, type_: str, fields: Mapping[str, Any]) -> None:
        """Append a record and wait until it is durable."""
        seq = self.append(type_, fields)
        if seq:
            await self.durable(seq)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending or self.failure is not None or self._fd < 0:
            return
        lines, self._pending = self._pending, []
        try:
            self._write(lines)
        except OSError as exc:
            self._fail(exc)
            return
        self._written = self._seq
        if self._rotate_due and not self._syncing:
            self._rotate()  # fsyncs what was written
        elif self.settings.fsync == "off":
            self._durable = self._written
            self._release()
        else:
            self._sync()

    def _write(self, lines: list[bytes]) -> None:
        fault_after = self.settings.fault_after
        if fault_after is not None and self._count + len(lines) > fault_after:
            raise OSError(errno.ENOSPC, "No space left on device (simulated: "
                                        "--audit-fault-after)")
        data = memoryview(b"".join(lines))
        size = len(data)
        while data:
            n = os.write(self._fd, data)
            data = data[n:]
        self._count += len(lines)
        self._size += size
        if self._size >= self.settings.max_bytes:
            self._rotate_due = True  # once no fsync runs on the file

    def _sync(self) -> None:
        """Start an fsync covering everything written, if someone waits and none runs."""
        if self._syncing or self._durable >= self._written or not self._waiters:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        target, self._syncing = self._written, True
        # the helper thread posts the outcome straight back to the loop: one hand-off, where
        # run_in_executor's wrapped future takes two loop turns before the waiters wake
        future = self._executor.submit(os.fsync, self._fd)
        future.add_done_callback(lambda f: self._post(loop, f, target))

    def _post(self, loop: asyncio.AbstractEventLoop, future: concurrent.futures.Future[None],
              target: int) -> None:
        """(On the helper thread.) Hand a finished fsync to the loop."""
        if not loop.is_closed():  # closed: shutting down, nobody waits any more
            loop.call_soon_threadsafe(self._synced, future, target)

    def _synced(self, future: concurrent.futures.Future[None], target: int) -> None:
        self._syncing = False
        exc = future.exception()
        if isinstance(exc, OSError):
            self._fail(exc)
            return
        if exc is not None:
            raise exc
        self.batches += 1
        self._durable = max(self._durable, target)
        self._release()
        if self._rotate_due:
            self._rotate()
        self._sync()

    def _release(self) -> None:
        """Wake the waiters whose records are durable, or fail them all."""
        durable, keep = self._durable, []
        for seq, future in self._waiters:
            if future.done():
                continue
            if seq <= durable:
                future.set_result(None)
            elif self.failure is not None:
                if self.settings.fail_open:
                    future.set_result(None)
                else:
                    future.set_exception(AuditUnavailable(self.failure))
            else:
                keep.append((seq, future))
        self._waiters = keep

    def _rotate(self) -> None:
        """Close the full file (fsynced) as PATH.N and start PATH afresh (directory
        fsynced); the chain goes on in the new file. Rare, so done inline."""
        self._rotate_due = False
        path = self.settings.path
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            os.rename(path, path.with_name(f"{path.name}.{self._next_index}"))
            self._next_index += 1
            flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_CLOEXEC", 0))
            self._fd = os.open(path, flags, 0o600)
            _fsync_dir(path.parent)
        except OSError as exc:
            self._fail(exc)
            return
        self._size = 0
        if self._written > self._durable:
            self._durable = self._written
            self._release()

    def _fail(self, exc: OSError) -> None:
        self.failure = f"{self.settings.path}: {exc.strerror or exc}"
        self._pending.clear()
        mode = ("failing open: requests are served UNAUDITED" if self.settings.fail_open
                else "failing closed: new requests get 503")
        self.alert(f"audit log write failed ({self.failure}); {mode}")
        self._release()

    def close(self) -> None:
        """Write a `shutdown` record, flush and fsync everything, close the file."""
        if self._closed or self._fd < 0:
            return
        with contextlib.suppress(AuditUnavailable):
            self.append("shutdown", {"records": self.records, "unaudited": self.unaudited})
        self._closed = True
        self._flush()
        self._executor.shutdown(wait=True)
        if self._fd >= 0:
            if self.failure is None:
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
                    self._durable = self._written
            os.close(self._fd)
            self._fd = -1
        self._release()

    # -- requests -----------------------------------------------------------------------------

    def accept(self, request_id: str, endpoint: str, body: bytes, client: str | None, *,
               payload: dict[str, Any] | None = None) -> RequestTrail:
        """Write the request's `accepted` record (queued, before dispatch); its trail.
        `payload` is `body` already decoded (the router's); else it is decoded here."""
        if payload is None:
            try:
                payload = decode_object(body)
            except ApiError:
                payload = None  # the router refuses it: its record says how many bytes came
        fields: dict[str, Any] = {"request_id": request_id, "endpoint": endpoint,
                                  "client": client, "body_bytes": len(body)}
        if isinstance(payload, dict):
            fields["model"] = payload.get("model")
            fields["stream"] = payload.get("stream") is True
            fields["params"] = {k: v for k, v in payload.items()
                                if k not in ("messages", "prompt", "model", "continuation")}
            prompt = payload.get("messages", payload.get("prompt"))
            fields.update(self._content("prompt", prompt))
        seq = self.append("accepted", fields)
        if seq == 0:
            self.unaudited += 1
        return RequestTrail(self, request_id, seq)

    def _content(self, name: str, value: Any) -> dict[str, Any]:
        """Prompt or output fields under the content policy."""
        if value is None:
            return {}
        # a chat prompt is hashed as the canonical JSON of its messages
        text = value if isinstance(value, str) else json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        policy = self.settings.content
        out: dict[str, Any] = {f"{name}_chars": len(text)}
        if policy in ("full", "hash"):
            out[f"{name}_sha256"] = text_sha256(text)
        if policy == "full":
            out[name] = value
        return out


class RequestTrail:
    """What the router learns about one request on its way, and its terminal record."""

    def __init__(self, log: AuditLog, request_id: str, accepted_seq: int) -> None:
        self.log = log
        self.request_id = request_id
        self.accepted_seq = accepted_seq
        self.started = time.monotonic()
        self.worker: str | None = None
        self.attempts = 0
        self.first_content: float | None = None
        self.pieces: list[str] = []
        self.content_events = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None
        self.error: str | None = None
        self.strip_usage = False  # usage was asked upstream for the record, not by the client
        self.finished = False

    @property
    def audited(self) -> bool:
        return self.accepted_seq > 0

    def attempt(self, worker_id: str) -> None:
        self.worker = worker_id
        self.attempts += 1

    def _content(self, text: str) -> None:
        if text:
            if self.first_content is None:  # else the router set it when the text went out
                self.first_content = time.monotonic()
            self.pieces.append(text)
            self.content_events += 1

    def observe_chunk(self, chunk: Mapping[str, Any]) -> None:
        """Take in one decoded stream chunk (content, finish reason, usage, error)."""
        if "error" in chunk:
            error = chunk["error"]
            self.error = str(error.get("message") if isinstance(error, dict) else error)
            return
        self._observe_payload(chunk, "delta")

    def _observe_payload(self, payload: Mapping[str, Any], part: str) -> None:
        """Usage, and each choice's text and finish reason; the text is in the choice's `part`
        (`delta` in a stream chunk, `message` in a chat body) or its `text` (completions)."""
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens")
            self.output_tokens = usage.get("completion_tokens")
        for choice in payload.get("choices") or []:
            inner = choice.get(part)
            text = inner.get("content") if isinstance(inner, dict) else choice.get("text")
            if isinstance(text, str):
                self._content(text)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def observe_event(self, event: bytes) -> bool:
        """Take in one SSE event of a stream; True when it is the `[DONE]` marker."""
        for data in sse_data(event):
            if data == b"[DONE]":
                return True
            chunk = None
            with contextlib.suppress(ValueError):
                chunk = json.loads(data)
            if isinstance(chunk, dict):
                self.observe_chunk(chunk)
        return False

    def observe_stream(self, body: bytes) -> None:
        """Take in the SSE bytes a client was sent (complete events), all at once: the
        `data:` payloads are decoded as one JSON array, which costs a fraction of decoding
        them one by one."""
        self.pieces.clear()
        self.content_events = 0
        payloads = [data for event in body.split(b"\n\n") for data in sse_data(event)]
        payloads = [p for p in payloads if p and p != b"[DONE]"]
        try:
            chunks = json.loads(b"[" + b",".join(payloads) + b"]")
        except ValueError:
            chunks = []
            for payload in payloads:
                with contextlib.suppress(ValueError):
                    chunks.append(json.loads(payload))
        for chunk in chunks:
            if isinstance(chunk, dict):
                self.observe_chunk(chunk)

    def observe_body(self, body: bytes) -> None:
        """Take in a whole (non-streamed) completion body."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(payload, dict):
            self._observe_payload(payload, "message")

    @property
    def text(self) -> str:
        """What the client was sent: the concatenated content deltas (or texts)."""
        return "".join(self.pieces)

    def _fields(self, type_: str, error: str | None, http_status: int | None
                ) -> dict[str, Any]:
        now = time.monotonic()
        fields: dict[str, Any] = {
            "request_id": self.request_id, "accepted_seq": self.accepted_seq,
            "worker": self.worker, "attempts": self.attempts,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens if self.output_tokens is not None
            else self.content_events,
            "output_tokens_source": "usage" if self.output_tokens is not None else "events",
            "ttft": None if self.first_content is None
            else round(self.first_content - self.started, 6),
            "duration": round(now - self.started, 6),
            "finish_reason": self.finish_reason, "error": error or self.error,
            "http_status": http_status,
        }
        if type_ == "completed" or self.pieces:
            fields.update(self.log._content("output", self.text))
        return fields

    async def finish(self, type_: str, *, error: str | None = None,
                     http_status: int | None = None) -> None:
        """Write the terminal record and wait until it is durable (once per request).
        Raises AuditUnavailable when the log failed and fails closed."""
        if self.finished:
            return
        self.finished = True
        if not self.audited:
            return  # counted as unaudited when it was accepted
        if type_ == "completed" and self.log.lose_completed > 0:
            self.log.lose_completed -= 1  # the planted bug: silently lost (test-only)
            return
        seq = self.log.append(type_, self._fields(type_, error, http_status))
        if seq:
            await self.log.durable(seq)
        if seq == 0 or seq > self.log.durable_seq:  # failing open: the record was lost
            self.log.unaudited += 1

    def abandon(self, type_: str, error: str) -> None:
        """Write the terminal record without waiting (the client is gone)."""
        if self.finished:
            return
        self.finished = True
        if self.audited:
            with contextlib.suppress(AuditUnavailable):
                self.log.append(type_, self._fields(type_, error, None))


def register_metrics(log: AuditLog, registry: Any) -> None:
    """The log's health on the router's /metrics (a prometheus CollectorRegistry)."""
    from prometheus_client import Gauge

    Gauge("llm_chaos_audit_records", "Audit records written since start",
          registry=registry).set_function(lambda: log.records)
    Gauge("llm_chaos_audit_commits", "Group commits (one write and fsync each)",
          registry=registry).set_function(lambda: log.batches)
    Gauge("llm_chaos_audit_available", "1 while the audit log takes records, 0 once it failed",
          registry=registry).set_function(lambda: int(log.failure is None))
    Gauge("llm_chaos_audit_unaudited_requests",
          "Requests served without their audit records (--audit-fail-open only)",
          registry=registry).set_function(lambda: log.unaudited)
