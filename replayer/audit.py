"""Audit queries: who did what and when, which threads used a tool, what changed, and audit bundles.

All of them read through a :class:`~replayer.replay.Replayer`, so row-level security applies
(``journal_app`` with the tenant set per transaction, or a tenant reader's own login) and the
reads are read-only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from journal import events as ev
from journal import reducer, state
from journal.errors import NotFound
from journal.events import Event
from journal.keys import validate_id
from replayer.bundle import write_bundle
from replayer.replay import InvalidQuery, Replayer, ThreadVerdict, verify_rows

_STATUS_AFTER = {ev.PAUSE: state.PAUSED, ev.RESUME: state.ACTIVE, ev.COMPLETE: state.COMPLETED,
                 ev.FAIL: state.FAILED}


# -- timeline --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a thread's timeline: what happened at a seq, when, where and by whom."""

    seq: int
    at: datetime
    type: str
    node: str | None
    tool: str | None
    agent_id: str | None
    #: The thread's status after this step.
    status: str
    #: A short human summary of the step (message text, call outcome, pause reason, …).
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at.isoformat(), "type": self.type, "node": self.node, "tool": self.tool,
                "agent_id": self.agent_id, "status": self.status, "detail": self.detail}


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _detail(e: Event) -> str:
    p = e.payload if isinstance(e.payload, dict) else {}
    if e.blob is not None:
        return f"payload in S3 ({e.blob.size} bytes, sha256 {e.blob.sha256[:12]}…)"
    if e.type == ev.MESSAGE:
        return f"{p.get('role')}: {_short(p.get('content'))}"
    if e.type == ev.TOOL_CALL:
        return f"call {p.get('call_id')} args {_short(p.get('args'), 40)}"
    if e.type == ev.TOOL_RESULT:
        if p.get("error") is not None:
            return f"result {p.get('call_id')} error: {_short(p.get('error'), 40)}"
        return f"result {p.get('call_id')} ok"
    if e.type in (ev.MEMORY_SET, ev.MEMORY_DELETE):
        return f"{p.get('path')}" + (f" = {_short(p.get('value'), 40)}" if e.type == ev.MEMORY_SET else "")
    if e.type in (ev.NODE_ENTER, ev.NODE_EXIT):
        return str(p.get("node") or e.node)
    for key in ("reason", "by", "summary", "error"):
        if key in p:
            return f"{key}: {_short(p[key])}"
    return _short(p) if p else ""


def _tool(e: Event) -> str | None:
    if e.type in (ev.TOOL_CALL, ev.TOOL_RESULT) and isinstance(e.payload, dict):
        t = e.payload.get("tool")
        return t if isinstance(t, str) else None
    return None


def timeline(r: Replayer, tenant: str, thread: str, after: int = 0, upto: int | None = None) -> list[Step]:
    """Every step of the thread (all tiers, gapless) with seq, time, type, node, tool, agent and status."""
    events = r.history(tenant, thread, after, upto, resolve_blobs=False)
    if not events and after == 0:
        raise NotFound(f"thread {tenant}/{thread} has no events (or this reader may not see them)")
    status = state.ACTIVE
    if after:
        status = r.replay(tenant, thread, at_seq=after).status
    out: list[Step] = []
    for e in events:
        status = _STATUS_AFTER.get(e.type, status)
        agent = e.actor.get("agent_id") if isinstance(e.actor, dict) else None
        out.append(Step(e.seq, e.at, e.type, e.node, _tool(e), agent if isinstance(agent, str) else None, status,
                        _detail(e)))
    return out


# -- tool usage across threads ---------------------------------------------------------------------

#: One query, served by ``events_tool_idx (tenant_id, tool, appended_at) WHERE tool IS NOT NULL``:
#: the index's leading columns are the equality predicates and the time window is its range.
TOOL_USAGE_SQL = """
SELECT thread_id,
       count(*) FILTER (WHERE type = 'tool_call') AS calls,
       count(*) FILTER (WHERE type = 'tool_result') AS results,
       count(*) FILTER (WHERE type = 'tool_result' AND payload ? 'error'
                        AND payload -> 'error' <> 'null'::jsonb) AS errors,
       min(appended_at) AS first_at,
       max(appended_at) AS last_at
FROM journal.events
WHERE tenant_id = %(tenant)s AND tool = %(tool)s AND tool IS NOT NULL
  AND appended_at >= %(since)s AND appended_at < %(until)s
GROUP BY thread_id
ORDER BY calls DESC, thread_id
"""


@dataclass(frozen=True, slots=True)
class ToolUsage:
    """How one thread used a tool within the window."""

    thread: str
    calls: int
    results: int
    errors: int
    first_at: datetime
    last_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"thread": self.thread, "calls": self.calls, "results": self.results, "errors": self.errors,
                "first_at": self.first_at.isoformat(), "last_at": self.last_at.isoformat()}


def _usage_params(tenant: str, tool: str, since: datetime, until: datetime | None) -> dict[str, Any]:
    validate_id(tenant, "tenant")
    if since.tzinfo is None or (until is not None and until.tzinfo is None):
        raise InvalidQuery("the window's times need a timezone")
    return {"tenant": tenant, "tool": tool, "since": since, "until": until or datetime.now(UTC) + timedelta(days=1)}


def tool_usage(r: Replayer, tenant: str, tool: str, since: datetime, until: datetime | None = None) -> list[ToolUsage]:
    """Every thread of ``tenant`` that called ``tool`` in ``[since, until)``, with counts (one indexed query)."""
    pg = r._pg()
    params = _usage_params(tenant, tool, since, until)
    with pg.scope(tenant):
        rows = pg.conn.execute(TOOL_USAGE_SQL, params).fetchall()
    return [ToolUsage(t, int(c), int(res), int(err), first, last) for t, c, res, err, first, last in rows]


def explain_tool_usage(r: Replayer, tenant: str, tool: str, since: datetime, until: datetime | None = None) -> str:
    """The PostgreSQL plan of :data:`TOOL_USAGE_SQL` as the reader runs it (row-level security included)."""
    pg = r._pg()
    params = _usage_params(tenant, tool, since, until)
    with pg.scope(tenant):
        rows = pg.conn.execute("EXPLAIN " + TOOL_USAGE_SQL, params).fetchall()
    return "\n".join(row[0] for row in rows)


_SPAN = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` ago, or an ISO 8601 time (UTC if it names no zone)."""
    m = _SPAN.fullmatch(text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    return parse_time(text)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; ``Z`` accepted; a time without a zone is taken as UTC."""
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise InvalidQuery(f"{text!r} is neither a span like 30d/12h/90m nor an ISO 8601 time") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# -- diff ------------------------------------------------------------------------------------------


def state_diff(r: Replayer, tenant: str, thread: str, from_seq: int, to_seq: int) -> dict[str, Any]:
    """``state.diff`` between the thread's states at ``from_seq`` and ``to_seq``."""
    return state.diff(r.replay(tenant, thread, at_seq=from_seq), r.replay(tenant, thread, at_seq=to_seq))


# -- bundles ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exported:
    """What ``export_bundle`` wrote."""

    path: Path
    tenant: str
    thread: str
    events: int
    blobs: int
    head_hash: bytes
    key_id: str | None
    #: The chain verdict on the exported rows against the recorded head.
    chain: ThreadVerdict

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "tenant": self.tenant, "thread": self.thread, "events": self.events,
                "blobs": self.blobs, "head_hash": self.head_hash.hex(), "key_id": self.key_id,
                "chain": self.chain.to_dict()}


def export_bundle(r: Replayer, tenant: str, thread: str, out: str | os.PathLike[str]) -> Exported:
    """Write the thread's audit bundle: its projected chain, every blob it references, and its folded state.

    The bundle covers seq 1..``threads.last_seq`` (events still only in Redis have no chain hash
    yet and are left for a later export). ``agent-journal verify --bundle`` checks it offline.
    """
    rows, head = r.stored_chain(tenant, thread)
    events = [s.event for s in rows]
    cache: dict[str, bytes] = {}
    blobs = {e.blob.sha256: r.fetch_blob(e, cache) for e in events if e.blob is not None}
    final = reducer.fold(r.resolve_blobs(events, cache), state.empty(tenant, thread), r.registry)
    path = write_bundle(out, tenant, thread, rows, blobs, final, r.key_id)
    # Exported even when broken (the bundle is then evidence of it), but the caller is told.
    chain = verify_rows(tenant, thread, rows, head, r.key)
    return Exported(path, tenant, thread, len(rows), len(blobs), rows[-1].hash, r.key_id, chain)
