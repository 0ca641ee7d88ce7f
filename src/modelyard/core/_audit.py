"""Append-only, hash-chained audit log.

Each record's hash covers its fields and the previous record's hash, so editing, deleting or reordering any
record breaks the chain from that point; the head row (last seq and hash) exposes deleted trailing records.
Appends lock the head row, so the chain is linear under any number of concurrent writers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.core._models import AuditHead, AuditRecord

if TYPE_CHECKING:
    from modelyard.core._platform import Context, Platform

GENESIS = "0" * 64
_FIELDS = ("seq", "ts", "actor", "project", "action", "resource", "outcome", "detail", "prev_hash")


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(detail: dict[str, Any] | None) -> str:
    # ensure_ascii escapes NUL and control characters, which PostgreSQL text columns refuse.
    return json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def _printable(value: str, limit: int) -> str:
    """Hostile input (NUL, control characters, megabyte names) is recorded escaped and bounded."""
    if not value.isprintable():
        value = value.encode("unicode_escape").decode("ascii")
    return value if len(value) <= limit else value[: limit - 3] + "..."


def record_hash(fields: dict[str, Any]) -> str:
    payload = json.dumps([fields[k] for k in _FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def append(
    session: Session,
    *,
    actor: str,
    project: str,
    action: str,
    resource: str,
    outcome: str,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one record inside the caller's write transaction (so it commits with the mutation)."""
    entry = {
        "actor": actor,
        "project": project,
        "action": action,
        "resource": resource,
        "outcome": outcome,
        "detail": detail,
    }
    return append_many(session, [entry])[0]


def append_many(session: Session, entries: list[dict[str, Any]]) -> list[AuditRecord]:
    """Append records (dicts of append's keyword arguments) with one lock of the head: a batch of 10,000
    artifacts costs one round trip for the chain, not 10,000."""
    head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()
    seq, prev, ts = head.seq, head.hash, now_ts()
    records = []
    for entry in entries:
        seq += 1
        fields: dict[str, Any] = {
            "seq": seq,
            "ts": ts,
            "actor": _printable(entry["actor"], 160),
            "project": _printable(entry["project"], 128),
            "action": _printable(entry["action"], 64),
            "resource": _printable(entry["resource"], 2048),
            "outcome": entry["outcome"],
            "detail": _canonical(entry.get("detail")),
            "prev_hash": prev,
        }
        prev = record_hash(fields)
        records.append(AuditRecord(**fields, hash=prev))
    session.add_all(records)
    head.seq, head.hash = seq, prev
    session.flush()
    return records


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""


def verify(session: Session, *, batch: int = 5000) -> VerifyResult:
    """Recompute the chain from the first record; report the first record that does not fit."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq).execution_options(yield_per=batch))
    for rec in rows.scalars():
        fields = {k: getattr(rec, k) for k in _FIELDS}
        if rec.seq != expected_seq:
            return VerifyResult(
                False, checked, expected_seq, f"record {expected_seq} is missing (deleted or renumbered)"
            )
        if rec.prev_hash != prev_hash:
            return VerifyResult(
                False,
                checked,
                rec.seq,
                f"record {rec.seq} does not follow record {rec.seq - 1} (deleted, inserted or reordered)",
            )
        if record_hash(fields) != rec.hash:
            return VerifyResult(False, checked, rec.seq, f"record {rec.seq} was modified (hash mismatch)")
        prev_hash, expected_seq, checked = rec.hash, expected_seq + 1, checked + 1
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    if head is None:
        return VerifyResult(False, checked, None, "the audit head row is missing")
    if head.seq != checked or head.hash != prev_hash:
        if head.seq > checked:
            return VerifyResult(
                False, checked, checked + 1, f"records {checked + 1}..{head.seq} were deleted from the end"
            )
        return VerifyResult(False, checked, head.seq, "the audit head does not match the last record")
    return VerifyResult(True, checked)


def query(
    session: Session,
    *,
    since: str | None = None,
    actor: str | None = None,
    project: str | None = None,
    limit: int | None = None,
) -> Iterator[AuditRecord]:
    """Matching records in chain order; with ``limit``, the newest ``limit`` of them (as `tail`): the oldest
    ones would hide what just happened behind a log's first records."""
    stmt = select(AuditRecord)
    if since:
        stmt = stmt.where(AuditRecord.ts >= since)
    if actor:
        stmt = stmt.where(AuditRecord.actor == actor)
    if project:
        stmt = stmt.where(AuditRecord.project == project)
    if limit:
        newest = stmt.order_by(AuditRecord.seq.desc()).limit(limit)
        yield from reversed(session.execute(newest).scalars().all())
        return
    yield from session.execute(stmt.order_by(AuditRecord.seq).execution_options(yield_per=1000)).scalars()


def to_dict(rec: AuditRecord) -> dict[str, Any]:
    out = {k: getattr(rec, k) for k in _FIELDS}
    out["detail"] = json.loads(rec.detail)
    out["hash"] = rec.hash
    return out


# -- services ---------------------------------------------------------------------------------------------
# Reading the log needs the approver role in the project; every project's records need an installation
# admin (admin of the system project).


def list_records(
    platform: Platform,
    ctx: Context,
    *,
    since: str | None = None,
    actor: str | None = None,
    all_projects: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    if all_projects:
        platform.authorize_installation(ctx, "audit.read", "audit:all-projects")
    else:
        platform.authorize(ctx, "audit.read", f"project:{ctx.project}")
    project = None if all_projects else ctx.project
    with platform.db.read() as s:
        return [to_dict(r) for r in query(s, since=since, actor=actor, project=project, limit=limit)]


def verify_chain(platform: Platform, ctx: Context) -> VerifyResult:
    platform.authorize(ctx, "audit.read", "audit:chain")
    with platform.db.read() as s:
        if platform.db.dialect == "postgresql":
            # One snapshot for the scan and the head: PostgreSQL's default gives each statement its own, so
            # records appended during a long scan moved the head past it ("deleted from the end").
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        return verify(s)
