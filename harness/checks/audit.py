"""The audit-completeness check: every client request matched by id to exactly one `accepted`
and one terminal audit record, the output hash of completed ones equal to what the client
received, statuses consistent, and the hash chain verified (by `harness.audit`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..audit import TERMINAL, verify
from .result import CheckResult, Verdict, merge
from .run import RunData, read_jsonl

__all__ = ["check_audit"]

# What the target may have recorded for what the client saw (a network fault between client and
# router can make a completed request look failed to the client, so only `ok` is strict).
_EXPECTED = {"ok": {"completed"}, "rate_limited": {"rejected"},
             "error_frame": {"failed", "timeout", "rejected"}}


def _kind(record: Mapping[str, Any]) -> str:
    # the writer names it `type`; accept `event` too, as the record shape was still moving
    return str(record.get("type", record.get("event", "")))


def _chain(paths: tuple[Path, ...]) -> tuple[Verdict, dict[str, Any]]:
    data = verify(list(paths)).to_json()
    return (Verdict.VALID if data.get("ok") else Verdict.INVALID), {
        "chain_ok": data.get("ok"), "chain_first_broken": data.get("first_broken"),
        "chain_problems": list(data.get("problems", []))[:20],
        "chain_in_doubt": len(data.get("in_doubt", [])),
        "torn_lines": len(data.get("torn_lines", []))}


def check_audit(run: RunData) -> CheckResult:
    """Valid when nothing is lost, duplicated or changed; unknown without an audit log."""
    if not run.audit_paths:
        return CheckResult("audit", Verdict.UNKNOWN,
                           "no audit.jsonl in the run directory (copy the target's audit log "
                           "there to judge completeness)")
    skipped: dict[str, int] = {}
    records = [r for p in run.audit_paths for r in read_jsonl(p, skipped)]
    accepted: dict[str, list[Mapping[str, Any]]] = {}
    terminal: dict[str, list[Mapping[str, Any]]] = {}
    declared: set[str] = set()
    for rec in records:
        kind, rid = _kind(rec), rec.get("request_id")
        if kind == "accepted" and isinstance(rid, str):
            accepted.setdefault(rid, []).append(rec)
        elif kind in TERMINAL and isinstance(rid, str):
            terminal.setdefault(rid, []).append(rec)
        elif kind == "recovery":
            for d in rec.get("in_doubt") or []:
                if isinstance(d, dict) and isinstance(d.get("request_id"), str):
                    declared.add(d["request_id"])
    lost: list[str] = []
    duplicated: list[str] = []
    in_doubt: list[str] = []
    unaudited_failures: list[str] = []
    hash_mismatch: list[str] = []
    hash_unknown = 0
    status_mismatch: list[dict[str, Any]] = []
    client_ids = {r.request_id for r in run.requests}
    for r in run.requests:
        acc, term = accepted.get(r.request_id, []), terminal.get(r.request_id, [])
        if len(acc) > 1 or len(term) > 1:
            duplicated.append(r.request_id)
            continue
        if not acc:
            (lost if r.ok else unaudited_failures).append(r.request_id)
            continue
        if not term:
            (lost if r.ok else in_doubt).append(r.request_id)
            continue
        kind = _kind(term[0])
        expected = _EXPECTED.get(r.status)
        if expected is not None and kind not in expected:
            status_mismatch.append({"request_id": r.request_id, "client": r.status,
                                    "audit": kind, "strict": r.ok})
        if r.ok and kind == "completed":
            digest = term[0].get("output_sha256")
            if not isinstance(digest, str) or r.text_sha256 is None:
                hash_unknown += 1
            elif digest != r.text_sha256:
                hash_mismatch.append(r.request_id)
    not_in_history = sorted(set(accepted) - client_ids)
    strict_mismatch = [m for m in status_mismatch if m["strict"]]
    chain_verdict, chain = _chain(run.audit_paths)
    evidence: dict[str, Any] = {
        "files": [p.name for p in run.audit_paths], "records": len(records),
        "client_requests": len(run.requests), "lost": lost[:50], "duplicated": duplicated[:50],
        "in_doubt": in_doubt[:50], "declared_in_doubt": len(declared),
        "unaudited_failures": unaudited_failures[:50], "output_hash_mismatch": hash_mismatch[:50],
        "output_hash_not_recorded": hash_unknown, "status_mismatch": status_mismatch[:50],
        "audited_not_in_history": len(not_in_history), "unreadable_lines": sum(skipped.values()),
        **chain}
    figures: dict[str, float | int | str | None] = {
        "lost": len(lost), "duplicated": len(duplicated), "in_doubt": len(in_doubt),
        "output_hash_mismatch": len(hash_mismatch), "status_mismatch": len(status_mismatch)}
    problems: list[str] = []
    if lost:
        problems.append(f"{len(lost)} completed request(s) lost from the log")
    if duplicated:
        problems.append(f"{len(duplicated)} duplicated")
    if hash_mismatch:
        problems.append(f"{len(hash_mismatch)} output hash(es) differ from what the client got")
    if strict_mismatch:
        problems.append(f"{len(strict_mismatch)} completed request(s) logged as not completed")
    if chain_verdict is Verdict.INVALID:
        problems.append("the hash chain does not verify")
    verdicts = [chain_verdict, Verdict.INVALID if problems else Verdict.VALID]
    if hash_unknown and not problems:
        verdicts.append(Verdict.UNKNOWN)
    verdict = merge(verdicts)
    if problems:
        summary = "; ".join(problems)
    elif verdict is Verdict.UNKNOWN:
        why = [chain.get("chain", "")] if chain_verdict is Verdict.UNKNOWN else []
        if hash_unknown:
            why.append(f"{hash_unknown} output hash(es) not recorded (content policy `none`?)")
        summary = "; ".join(w for w in why if w)
    else:
        summary = (f"{len(client_ids)} client requests matched, {len(in_doubt)} in doubt, "
                   "chain verifies")
    return CheckResult("audit", verdict, summary, evidence, figures)
