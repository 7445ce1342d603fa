"""`llm-chaos audit verify`: any changed byte, deleted or swapped record is found and named;
torn lines and requests in doubt are reported, not failed; exit codes 0 / 1 / 2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from harness.audit import verify
from harness.audit.verify import verify_files
from harness.cli import main
from targets.reference.audit import AuditLog, AuditSettings, log_files


def _write_log(path: Path) -> None:
    """Two runs (the first crashed with a torn write), rotated into several files."""

    async def run(n: int, crash: bool) -> None:
        log = AuditLog(AuditSettings(path=path, max_bytes=4096, content="full"))
        log.open()
        for i in range(n):
            body = json.dumps({"model": "sim", "prompt": f"prompt {i}", "max_tokens": 3})
            trail = log.accept(f"req-{i}", "/v1/completions", body.encode(), "127.0.0.1:1")
            trail.attempt("sim-1")
            trail.pieces.append(f"answer {i}")
            if i % 4 == 3:
                trail.abandon("cancelled", "client disconnected")
            else:
                await trail.finish("completed", http_status=200)
        if crash:
            last = log.accept("in-flight", "/v1/completions", b'{"model":"sim"}', None)
            await log.durable(last.accepted_seq)
            return
        log.close()

    asyncio.run(run(9, crash=True))
    with open(path, "ab") as fh:
        fh.write(b'{"accepted_seq":30,"att')
    asyncio.run(run(3, crash=False))


@pytest.fixture(scope="module")
def log_bytes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    _write_log(path)
    return [(p.name, p.read_bytes()) for p in log_files(path)]


def test_a_good_log_verifies(log_bytes: list[tuple[str, bytes]]) -> None:
    report = verify_files(log_bytes)
    assert report.ok, report.summary()
    assert len(report.files) >= 2
    assert report.requests == 13 and report.by_type["completed"] == 10
    assert report.by_type["cancelled"] == 2 and report.by_type["recovery"] == 1
    assert [d["request_id"] for d in report.in_doubt] == ["in-flight"]
    assert report.in_doubt[0]["declared"]
    assert len(report.torn) == 1 and report.torn[0]["recovered_by"]


def _lines(log: list[tuple[str, bytes]], records_only: bool = False
           ) -> list[tuple[int, int, int]]:
    """(file index, line number, byte offset of the line's start) of every line."""
    out = []
    for f, (_, data) in enumerate(log):
        offset = 0
        for n, line in enumerate(data.split(b"\n")[:-1], start=1):
            if not records_only or line.endswith(b"}"):  # the torn line does not
                out.append((f, n, offset))
            offset += len(line) + 1
    return out


def test_every_changed_byte_is_found_and_named(log_bytes: list[tuple[str, bytes]]) -> None:
    for f, (name, data) in enumerate(log_bytes):
        starts = [o for (fi, _, o) in _lines(log_bytes) if fi == f]
        for pos in range(len(data)):
            changed = bytearray(data)
            changed[pos] ^= 0x01
            log = list(log_bytes)
            log[f] = (name, bytes(changed))
            report = verify_files(log)
            line = sum(1 for s in starts if s <= pos)
            assert not report.ok, f"{name} byte {pos} changed, yet the log verifies"
            broken = report.first_broken
            assert broken is not None and (broken.file, broken.line) == (name, line), \
                f"{name} byte {pos} (line {line}): {broken}"


def test_deleted_and_swapped_records_are_named(log_bytes: list[tuple[str, bytes]]) -> None:
    lines = _lines(log_bytes, records_only=True)
    for index, (f, n, _) in enumerate(lines[:-1]):  # all but the very last record
        log = [(name, data.split(b"\n")) for name, data in log_bytes]
        name, parts = log[f]
        deleted = json.loads(parts.pop(n - 1))
        report = verify_files([(nm, b"\n".join(p)) for nm, p in log])
        assert not report.ok, f"deleting {name} line {n} went unnoticed"
        nf, nn, _ = lines[index + 1]
        broken = report.first_broken
        assert broken is not None
        if deleted["type"] == "recovery":  # the torn line before it is now unexplained
            assert (broken.file, broken.line) == (name, n - 1)
            continue
        # the record after the deleted one is named (same line number in the same file)
        assert (broken.file, broken.line) == (log_bytes[nf][0], nn - (nf == f))
    name, data = log_bytes[0]
    parts = data.split(b"\n")
    parts[3], parts[4] = parts[4], parts[3]
    report = verify_files([(name, b"\n".join(parts)), *log_bytes[1:]])
    assert not report.ok and report.first_broken is not None
    assert (report.first_broken.file, report.first_broken.line) == (name, 4)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    _write_log(path)
    assert main(["audit", "verify", str(path), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "the log verifies" in out and "1 in doubt" in out and "torn line" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["audit", "verify", str(path)]) == 1
    assert "BROKEN; first broken record: audit.jsonl line" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["audit", "verify"])
    assert exc.value.code == 2
    assert verify([path]).ok is False
