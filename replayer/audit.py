"""Audit queries: who did what and when, which threads used a tool, what changed, and audit bundles.

All of them read through a :class:`~replayer.replay.Replayer`, so row-level security applies
(``journal_app`` with the tenant set per transaction, or a tenant reader's own login) and the
reads are read-only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from journal import events as ev
from journal import lifecycle, reducer, state
from journal.errors import InvalidQuery, NotFound
from journal.events import Event
from journal.keys import validate_id
from replayer import langgraph_fold as lg
from replayer.bundle import write_bundle
from replayer.replay import Replayer, ThreadVerdict, verify_rows
from replayer.sources import (
    EXPLAIN_TOOL_USAGE_SQL,
    OFFLOADED_TOOL_THREADS_SQL,
    TOOL_EVENTS_IN_WINDOW_SQL,
    TOOL_USAGE_SQL,
)

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




def _langgraph_detail(e: Event, previous: dict[str, str]) -> str | None:
    """A LangGraph event in words; a checkpoint whose parent is not the namespace's previous one is a fork.

    ``previous`` (namespace -> last checkpoint id seen, in seq order) is updated as events pass.
    """
    p = e.payload if isinstance(e.payload, dict) else {}
    if e.type == lg.DELETED:
        previous.clear()
        return "thread deleted (tombstone)"
    if e.type == lg.PRUNED:
        drop = p.get("drop")
        return f"pruned {len(drop) if isinstance(drop, list) else '?'} checkpoints ({p.get('reason')})"
    if e.type == lg.WRITES:
        writes = p.get("writes")  # format 2; format 3 names them in "channels" (the writes are packed)
        channels = sorted({str(w[1]) for w in writes if isinstance(w, list) and len(w) == 3}) if isinstance(
            writes, list) else [str(c) for c in p.get("channels") or [] if isinstance(c, str)]
        return f"writes {', '.join(channels) or '-'} on checkpoint {str(p.get('checkpoint_id'))[-12:]}"
    if e.type != lg.CHECKPOINT or e.blob is not None:
        return None
    ns, cid, parent = str(p.get("ns") or ""), str(p.get("id")), p.get("parent")
    text = f"checkpoint {cid[-12:]} step {p.get('step')} {p.get('source')}" + (f" ns {ns}" if ns else "")
    last = previous.get(ns)
    if parent is not None and last is not None and parent != last:
        text = f"FORK from {str(parent)[-12:]} (not the previous {last[-12:]}): {text}"
    previous[ns] = cid
    return text


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
    pos = _position_at(r, tenant, thread, after) if after else lifecycle.Position()
    out: list[Step] = []
    # An offloaded tool event names its tool inside the payload in S3: fetch those (few) to fill the column.
    offloaded = [e for e in events if e.blob is not None and e.type in (ev.TOOL_CALL, ev.TOOL_RESULT)]
    tools = {e.seq: _tool(e) for e in r.resolve_blobs(offloaded)}
    checkpoints: dict[str, str] = {}
    if after and any(e.type == lg.CHECKPOINT for e in events):
        _langgraph_before(r, tenant, thread, after, checkpoints)
    for e in events:
        pos = lifecycle.step(pos, e.type, e.payload, e.node)  # the fold's status rules, without folding
        agent = e.actor.get("agent_id") if isinstance(e.actor, dict) else None
        detail = _langgraph_detail(e, checkpoints) if e.type.startswith("x.langgraph.") else None
        out.append(Step(e.seq, e.at, e.type, e.node, tools.get(e.seq) or _tool(e),
                        agent if isinstance(agent, str) else None, pos.status, detail or _detail(e)))
    return out


def _langgraph_before(r: Replayer, tenant: str, thread: str, seq: int, checkpoints: dict[str, str]) -> None:
    """Seed a page's fork detection with the checkpoints (and deletes) up to ``seq``."""
    for e in _events_up_to(r, tenant, thread, seq, (lg.CHECKPOINT, lg.DELETED)):
        _langgraph_detail(e, checkpoints)


def _position_at(r: Replayer, tenant: str, thread: str, seq: int) -> lifecycle.Position:
    """Status and open nodes at ``seq`` from the few events that move them, not a replay of the whole state.

    A page deep into a long conversation would otherwise decode a snapshot holding every message
    (0.6-1.1 s per page at 100,000 events, bench_console.py) just to seed its status column.
    """
    pos = lifecycle.Position()
    moves = _events_up_to(r, tenant, thread, seq, lifecycle.MOVES)
    for e in moves:
        pos = lifecycle.step(pos, e.type, e.payload, e.node)
    if pos.status == state.ABANDONED and moves and moves[-1].seq < seq:
        # Events that move nothing were not read; one after the ``abandon`` made the thread active again.
        pos = lifecycle.Position(state.ACTIVE, pos.branches)
    return pos


def _events_up_to(r: Replayer, tenant: str, thread: str, seq: int, types: Iterable[str]) -> list[Event]:
    """The thread's events of ``types`` with seq <= ``seq``, in seq order, from every tier (archive, PostgreSQL,
    the Redis tail), without reading the others."""
    wanted = set(types)
    pg = r._pg()
    with pg.scope(tenant):
        found = pg.events_of_types(tenant, thread, seq, sorted(wanted))
        stored = pg.head(tenant, thread)
        archived = r.archive.head(tenant, thread) if r.archive is not None else 0
        if archived and r.archive is not None:
            # Rows at or below the archive's head are in S3 only (projections.archive).
            found = [e for e in r.archive.events(tenant, thread, 0, min(seq, archived))
                     if e.type in wanted] + found
            stored = max(stored, archived)
    if seq > stored:  # the rest is still only in the Redis tail
        found += [e for e in r.history(tenant, thread, stored, seq, resolve_blobs=False) if e.type in wanted]
    return found


# -- tool usage across threads ---------------------------------------------------------------------

# Counts are the fold's: a call counts for the tool the folded state gives it, and a result for
# the call it resolves (a result need not name its tool). The projected ``tool`` column cannot
# give that alone: an offloaded payload (over the blob threshold) leaves the row without a tool
# or payload, and a result without ``tool`` has none either. So the SQL only finds the threads
# and the window's seqs; each thread is then replayed (nearest snapshot + tail, blobs fetched).
# The statements (and the indexes they rely on) are in replayer.sources.

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
    """Every thread of ``tenant`` that called ``tool`` in ``[since, until)``, with the fold's counts.

    ``calls``: calls to ``tool`` appended in the window; ``results``/``errors``: results appended in
    the window that resolve a call to ``tool`` (errors: those with an ``error``), exactly as the
    thread's folded state attributes them, offloaded payloads included.
    """
    pg = r._pg()
    params = _usage_params(tenant, tool, since, until)
    with pg.scope(tenant):
        threads = sorted({t for (t,) in pg.conn.execute(TOOL_USAGE_SQL, params)}
                         | {t for (t,) in pg.conn.execute(OFFLOADED_TOOL_THREADS_SQL, params)})
        at: dict[str, dict[int, datetime]] = {}
        if threads:
            for t, seq, appended in pg.conn.execute(TOOL_EVENTS_IN_WINDOW_SQL, {**params, "threads": threads}):
                at.setdefault(t, {})[seq] = appended
    out = []
    for thread, when in at.items():
        folded = r.replay(tenant, thread, at_seq=max(when))
        calls = results = errors = 0
        counted: list[datetime] = []
        for call in folded.tool_calls.values():
            if call.tool != tool:
                continue
            if call.seq is not None and call.seq in when:
                calls += 1
                counted.append(when[call.seq])
            if call.result is not None and call.result.seq in when:
                results += 1
                errors += call.result.failed
                counted.append(when[call.result.seq])
        if counted:
            out.append(ToolUsage(thread, calls, results, errors, min(counted), max(counted)))
    return sorted(out, key=lambda u: (-u.calls, u.thread))


def explain_tool_usage(r: Replayer, tenant: str, tool: str, since: datetime, until: datetime | None = None) -> str:
    """The PostgreSQL plan of ``sources.TOOL_USAGE_SQL`` as the reader runs it (row-level security included)."""
    pg = r._pg()
    params = _usage_params(tenant, tool, since, until)
    with pg.scope(tenant):
        rows = pg.conn.execute(EXPLAIN_TOOL_USAGE_SQL, params).fetchall()
    return "\n".join(row[0] for row in rows)


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
