"""What operators look at: tenants, threads, dead letters and conflicts, as plain rows.

Read as ``journal_writer`` (whose policy sees every tenant); statements are built from the
Core tables. The conflicts come with both bodies decoded, so the two versions of a reused
seq can be compared side by side before ``agent-journal unfence``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from journal import codec, keys
from journal.errors import CodecError
from journal.settings import Settings
from projections import db, tables

_t, _d, _c = tables.threads, tables.dead_letters, tables.conflicts

TENANTS_SQL = tables.compiled(
    sa.select(_t.c.tenant_id, sa.func.count().label("threads"), sa.func.sum(_t.c.event_count).label("events"),
              sa.func.count().filter(_t.c.fenced).label("fenced"), sa.func.max(_t.c.updated_at).label("last"))
    .group_by(_t.c.tenant_id).order_by(_t.c.tenant_id))


@dataclass(frozen=True, slots=True)
class Row:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TenantRow(Row):
    tenant: str
    threads: int
    events: int
    fenced: int
    last_activity: datetime | None


@dataclass(frozen=True, slots=True)
class ThreadRow(Row):
    thread: str
    status: str
    node: str | None
    last_seq: int
    max_seq: int
    events: int
    updated_at: datetime
    fenced: bool


@dataclass(frozen=True, slots=True)
class DeadLetter(Row):
    tenant: str
    stream_id: str
    thread: str | None
    seq: int | None
    reason: str
    attempts: int
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class Conflict(Row):
    tenant: str
    thread: str
    seq: int
    detected_at: datetime
    resolved_at: datetime | None
    existing: dict[str, Any] | None
    incoming: dict[str, Any]


def _rows(settings: Settings, statement: str, params: dict[str, Any]) -> list[Any]:
    with db.connect(settings) as conn:
        rows = conn.execute(statement, params).fetchall()
        conn.rollback()
    return rows


def tenants(settings: Settings) -> list[TenantRow]:
    """Every tenant PostgreSQL holds threads of, with counts and last activity."""
    return [TenantRow(t, int(n), int(e or 0), int(f), last) for t, n, e, f, last in _rows(settings, TENANTS_SQL, {})]


def threads(settings: Settings, tenant: str, *, status: tuple[str, ...] = (), idle: timedelta | None = None,
            limit: int = 1000) -> list[ThreadRow]:
    """The tenant's threads, most recently active first; ``idle``: only those quiet for at least that long."""
    keys.validate_id(tenant, "tenant")
    query = sa.select(_t.c.thread_id, _t.c.status, _t.c.node, _t.c.last_seq, _t.c.max_seq, _t.c.event_count,
                      _t.c.updated_at, _t.c.fenced).where(_t.c.tenant_id == sa.bindparam("tenant"))
    params: dict[str, Any] = {"tenant": tenant, "limit": limit}
    if status:
        query = query.where(_t.c.status == sa.any_(sa.bindparam("status", type_=ARRAY(sa.Text))))
        params["status"] = list(status)
    if idle is not None:
        query = query.where(_t.c.updated_at <= sa.func.now() - sa.bindparam("idle", type_=sa.Interval))
        params["idle"] = idle
    query = query.order_by(_t.c.updated_at.desc()).limit(sa.bindparam("limit"))
    return [ThreadRow(*r) for r in _rows(settings, tables.compiled(query), params)]


def dead_letters(settings: Settings, tenant: str | None = None, limit: int = 1000) -> list[DeadLetter]:
    """Entries the projector could not store as events, newest first."""
    query, params = _of_tenant(sa.select(_d.c.tenant_id, _d.c.stream_id, _d.c.thread_id, _d.c.seq, _d.c.reason,
                                         _d.c.attempts, _d.c.last_seen), _d, tenant, limit)
    query = query.order_by(_d.c.last_seen.desc()).limit(sa.bindparam("limit"))
    return [DeadLetter(*r) for r in _rows(settings, tables.compiled(query), params)]


def conflicts(settings: Settings, tenant: str | None = None, limit: int = 1000) -> list[Conflict]:
    """Reused sequence numbers: the stored version and the incoming one, decoded."""
    query, params = _of_tenant(sa.select(_c.c.tenant_id, _c.c.thread_id, _c.c.seq, _c.c.detected_at,
                                         _c.c.resolved_at, _c.c.existing_body, _c.c.incoming_body), _c, tenant, limit)
    query = query.order_by(_c.c.detected_at.desc()).limit(sa.bindparam("limit"))
    return [Conflict(t, th, seq, at, done, _body(t, th, seq, old), _body(t, th, seq, new) or {})
            for t, th, seq, at, done, old, new in _rows(settings, tables.compiled(query), params)]


def _of_tenant(query: sa.Select[Any], table: sa.Table, tenant: str | None,
               limit: int) -> tuple[sa.Select[Any], dict[str, Any]]:
    """``query`` limited to ``tenant``'s rows when one is named, with its parameters."""
    if tenant is None:
        return query, {"limit": limit}
    keys.validate_id(tenant, "tenant")
    return query.where(table.c.tenant_id == sa.bindparam("tenant")), {"limit": limit, "tenant": tenant}


def _body(tenant: str, thread: str, seq: int, body: bytes | None) -> dict[str, Any] | None:
    if body is None:
        return None
    try:
        e = codec.decode_body(tenant, thread, seq, 0, bytes(body))
    except CodecError as err:
        return {"undecodable": str(err)}
    return {"type": e.type, "node": e.node, "payload": e.payload, "actor": dict(e.actor),
            "idempotency_key": e.idempotency_key, "blob": e.blob.sha256 if e.blob else None}
