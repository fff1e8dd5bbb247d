"""One projector batch into PostgreSQL, in one transaction.

Per thread, under a row lock on ``threads`` (taken in key order so workers never deadlock):
events already stored are compared byte for byte — an identical redelivery is skipped, a
different event under the same seq is a conflict (recorded, thread fenced, nothing
overwritten); new events are inserted with their chain hash when they extend the verified
head, or without one (to be chained when the gap fills) when an earlier seq is still in
flight on another worker. The stream position is recorded in the same transaction.

The row locks are read first (one round trip), then the writes and COMMIT go in a second; a small
batch of threads whose heads this worker committed last (``KnownHeads``) goes in one, the locks
checking that the heads are still those.
"""

from __future__ import annotations

import contextlib
import operator
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol

import orjson
import psycopg
from psycopg.adapt import PyFormat

from journal import codec, lifecycle
from journal.chain import GENESIS, link
from journal.events import TOOL_CALL, TOOL_RESULT, Event
from journal.reducer import Registry
from projections import metrics, snapshots, statements


@dataclass(frozen=True, slots=True)
class Item:
    """A decoded stream entry ready to project."""

    stream_id: str
    event: Event
    body: bytes
    #: ``codec.canonical_bytes(event)``: what the chain hashes.
    canonical: bytes
    #: The event's ``journal.events`` columns but the chain's last two (prev_hash, hash).
    row: tuple[Any, ...]

    @classmethod
    def of(cls, stream_id: str, event: Event, body: bytes) -> Item:
        """An item with all that does not depend on its thread's head computed now, when it is decoded
        (the projector does that while PostgreSQL runs the batch before: off the batch's critical path)."""
        return cls(stream_id, event, body, codec.canonical_bytes(event), _columns(event, body, stream_id))


@dataclass(frozen=True, slots=True)
class Poison:
    """A stream entry that cannot be projected, and why."""

    tenant: str
    stream_id: str
    reason: str
    entry: bytes
    thread: str | None = None
    seq: int | None = None


#: (tenant, thread, head before the batch, head after it, the events chained in between): what
#: ``snapshots.write_due`` needs to write the snapshots due at the multiples of K in that range.
SnapshotJob = tuple[str, str, int, int, list[Event]]


@dataclass(slots=True)
class BatchResult:
    inserted: int = 0
    duplicates: int = 0
    conflicts: list[tuple[str, str, int]] = field(default_factory=list)
    #: (tenant, thread) -> verified head after the batch, for the "projected" marker.
    heads: dict[tuple[str, str], int] = field(default_factory=dict)
    snapshots: int = 0
    dead_letters: int = 0
    #: tenant -> highest stream position committed by this batch (ms, seq).
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: tenant -> committed stream time (ms) before this batch (0 for a new tenant).
    previous_ms: dict[str, int] = field(default_factory=dict)
    #: Snapshots the batch made due, left to the caller by ``write_batch(defer_snapshots=True)``.
    snapshot_jobs: list[SnapshotJob] = field(default_factory=list)


#: (last_seq, last_hash, max_seq, status, branches): a thread's row as ``statements.LOCK_THREADS`` reads it.
Head = tuple[int, bytes | None, int, str, list[str]]


class KnownHeads:
    """The heads of the threads this worker committed last, for small batches in one round trip.

    A small batch whose threads' heads are known here (and that needs nothing else read: every seq
    above its thread's stored ones) is planned before PostgreSQL is asked, then sent as one pipeline:
    the row locks with a check that the heads are still these (``statements.EXPECT_HEADS``), the
    writes and the COMMIT. Otherwise a batch takes two round trips: lock and read the heads, then write.
    A head another writer moved (a second projector, a rebuild, retention) fails the check: the
    batch is rolled back and run the usual way, and that thread is left out of here for
    ``cooldown`` batches, so workers sharing threads do not pay a failed check for every batch.
    """

    def __init__(self, size: int = 100_000, cooldown: int = 256) -> None:
        self.size = size
        self.cooldown = cooldown
        self._heads: dict[tuple[str, str], Head] = {}
        #: thread -> the batch count until which it is not remembered (its head moved under this worker)
        self._cold: dict[tuple[str, str], int] = {}
        self._batches = 0

    def of(self, by_thread: dict[tuple[str, str], list[Item]]) -> dict[tuple[str, str], Head] | None:
        """The heads of every thread of the batch, if all are known and every seq is above the stored ones."""
        self._batches += 1
        known: dict[tuple[str, str], Head] = {}
        for thread, its in by_thread.items():
            head = self._heads.get(thread)
            # max_seq above last_seq: events wait for an earlier one, which only the full path reads.
            if head is None or head[2] != head[0] or min(it.event.seq for it in its) <= head[2]:
                return None
            known[thread] = head
        return known

    def remember(self, heads: dict[tuple[str, str], Head]) -> None:
        for thread, head in heads.items():
            if self._cold.get(thread, 0) <= self._batches:
                self._heads.pop(thread, None)
                self._heads[thread] = head  # at the end: the oldest are dropped first
        while len(self._heads) > self.size:
            del self._heads[next(iter(self._heads))]

    def forget(self, threads: Iterable[tuple[str, str]], *, moved: bool = False) -> None:
        if moved and len(self._cold) > self.size:
            self._cold = {t: n for t, n in self._cold.items() if n > self._batches}
        for thread in threads:
            self._heads.pop(thread, None)
            if moved:
                self._cold[thread] = self._batches + self.cooldown


#: Up to this many rows a batch inserts them from unnest() arrays in its last pipeline instead of a COPY
#: (``statements.INSERT_EVENTS_UNNEST``): two round trips fewer, what a small batch's latency is made of.
SMALL_BATCH = 64


class Overlap(Protocol):
    """CPU work a caller runs while one batch waits on PostgreSQL (``write_batch`` calls each at most once;
    either may not be called if a statement fails first). The projector acknowledges the batch before
    while the thread rows are locked, and decodes the next batch while the writes and COMMIT run."""

    def while_locking(self) -> None: ...

    def while_writing(self) -> None: ...


_seq_of = operator.attrgetter("event.seq")


def stream_position(stream_id: str) -> tuple[int, int]:
    """A stream id as (ms, seq), for ordering."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


_INT64_MAX = 2**63 - 1


def _storable(position: tuple[int, int]) -> tuple[int, int]:
    """A stream position within ``bigint``: Redis ids go to 2**64 - 1, and a tenant may XADD one that high
    itself; clamped, its offset stays in the past of nothing honest (no real clock reaches 2**63 ms)."""
    ms, seq = position
    return (ms, seq) if ms <= _INT64_MAX and seq <= _INT64_MAX else (min(ms, _INT64_MAX), min(seq, _INT64_MAX))


def _columns(e: Event, body: bytes, stream_id: str) -> tuple[Any, ...]:
    tool = None
    if e.type in (TOOL_CALL, TOOL_RESULT) and isinstance(e.payload, dict):
        t = e.payload.get("tool")
        tool = t if isinstance(t, str) else None
    agent = e.actor.get("agent_id") if isinstance(e.actor, dict) else None
    return (
        e.tenant, e.thread, e.seq, e.type, e.node, tool, agent if isinstance(agent, str) else None,
        orjson.dumps(e.actor).decode(), e.ts_ms,
        None if e.blob else orjson.dumps(e.payload, default=codec.json_default).decode(),
        e.blob.sha256 if e.blob else None, e.blob.size if e.blob else None, e.idempotency_key, e.version,
        body, stream_id,
    )


_staged: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def _stage_events(conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Rows go through a temporary table by binary COPY (the C fast path), then one INSERT … SELECT.

    COPY straight into journal.events is refused under row-level security; a session's own
    temporary table has none, and the INSERT still passes through the policies.
    """
    if conn not in _staged:
        conn.execute(statements.CREATE_STAGE)
        # set_types picks dumpers by oid, and for bytea that is psycopg.dbapi20's Python dumper (registered
        # last); the C dumper of bytes is a third of the COPY's client time on three bytea columns.
        conn.adapters.register_dumper(bytes, psycopg.adapters.get_dumper(bytes, PyFormat.BINARY))
        _staged.add(conn)
    with conn.cursor().copy(statements.COPY_STAGE) as copy:
        copy.set_types(statements.COPY_TYPES)
        for row in rows:
            copy.write_row(row)


def write_batch(conn: psycopg.Connection, items: Iterable[Item], poison: Iterable[Poison] = (), *,
                key: bytes | None = None, snapshot_every: int = 100,
                resolve: snapshots.BlobSource | None = None, overlap: Overlap | None = None,
                registry: Registry | None = None, defer_snapshots: bool = False,
                heads: KnownHeads | None = None) -> BatchResult:
    """Project ``items`` (and dead-letter ``poison``) in one transaction, committed here (rolled back on error).

    ``overlap`` is work of the caller's run while the batch waits: its ``while_locking`` once the thread
    rows are being locked, its ``while_writing`` once the writes (and the COMMIT) are on their way.
    With ``defer_snapshots`` the snapshots due are not written: they are returned in
    ``result.snapshot_jobs`` for ``write_snapshots`` (the projector acknowledges first: a snapshot is
    derived data, and folding one took 30 ms of a 3-event batch on a long conversation).
    ``heads``: the caller's :class:`KnownHeads`, kept up to date here, for small batches in one round trip.
    """
    items = list(items)
    poison = list(poison)
    result = _positioned(items, poison)
    by_thread: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for it in items:
        by_thread[(it.event.tenant, it.event.thread)].append(it)

    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError("write_batch commits its own transaction: call it outside one")
    known = heads.of(by_thread) if heads is not None and not poison and len(items) <= SMALL_BATCH else None
    try:
        try:
            plan = _run_batch(conn, by_thread, poison, result, key, snapshot_every, resolve, overlap, registry,
                              defer_snapshots, known)
        except psycopg.errors.DivisionByZero:  # statements.EXPECT_HEADS: a head moved since this worker wrote it
            if known is None or heads is None:
                raise
            metrics.KNOWN_HEADS.labels("moved").inc()
            conn.rollback()
            heads.forget(known, moved=True)
            known = None
            result = _positioned(items, poison)
            # The overlap's work ran (or was not due) in the failed try: not twice.
            plan = _run_batch(conn, by_thread, poison, result, key, snapshot_every, resolve, None, registry,
                              defer_snapshots, None)
    except BaseException:
        if heads is not None:
            heads.forget(by_thread)
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        raise
    if heads is not None:
        heads.remember(plan.heads)
    if known is not None:
        metrics.KNOWN_HEADS.labels("committed").inc()
    return result


def _positioned(items: list[Item], poison: list[Poison]) -> BatchResult:
    """A batch's result before it runs: each tenant's highest stream position in it."""
    result = BatchResult()
    positions = result.positions
    for tenant, stream_id in chain(((it.event.tenant, it.stream_id) for it in items),
                                   ((p.tenant, p.stream_id) for p in poison)):
        pos = _storable(stream_position(stream_id))
        if pos > positions.get(tenant, (0, 0)):
            positions[tenant] = pos
    return result


def _run_batch(conn: psycopg.Connection, by_thread: dict[tuple[str, str], list[Item]], poison: list[Poison],
               result: BatchResult, key: bytes | None, snapshot_every: int, resolve: snapshots.BlobSource | None,
               overlap: Overlap | None, registry: Registry | None, defer_snapshots: bool,
               known: dict[tuple[str, str], Head] | None) -> _Plan:
    """Run a batch: with ``known`` heads in one pipeline (``KnownHeads``), else locking and reading them first."""
    positions = result.positions
    tenants = sorted(positions)
    offsets = None
    if known is None:
        # Index nested loops for every join on an unnest() batch (statements.NO_HASHJOIN says why).
        with conn.pipeline():
            if len(by_thread) > SMALL_BATCH:  # a handful of keys is planned as nested loops anyway
                conn.execute(statements.NO_HASHJOIN)
                conn.execute(statements.NO_MERGEJOIN)
            locked = _lock_threads(conn, sorted(by_thread)) if by_thread else None
            if overlap is not None:
                overlap.while_locking()
            heads = {(r[0], r[1]): r[2:] for r in locked.fetchall()} if locked is not None else {}
    else:
        heads = known
    plan = _plan_threads(conn, by_thread, heads, result, key, snapshot_every) if by_thread else _Plan()
    if defer_snapshots:
        result.snapshot_jobs, plan.snapshot_jobs = plan.snapshot_jobs, []
    if len(plan.rows) > SMALL_BATCH:
        _stage_events(conn, plan.rows)
    # Nothing below needs a result: in pipeline mode PostgreSQL runs these statements, and the COMMIT
    # when no snapshot is due, while ``overlap.while_writing`` (the projector decoding its next batch) runs here.
    with conn.pipeline():
        if known is not None:
            conn.execute(statements.EXPECT_HEADS, _expected(known))
            if overlap is not None:
                overlap.while_locking()
        _apply(conn, plan)
        if poison:
            conn.cursor().executemany(statements.INSERT_DEAD_LETTER,
                                      [(p.tenant, p.stream_id, p.thread, p.seq, p.reason, p.entry) for p in poison])
            result.dead_letters = len(poison)
        if positions:
            offsets = conn.execute(
                statements.ADVANCE_OFFSETS,
                (tenants, tenants, [positions[t][0] for t in tenants], [positions[t][1] for t in tenants]))
        if not plan.snapshot_jobs:
            conn.execute(statements.COMMIT)
        if overlap is not None:
            overlap.while_writing()
    if offsets is not None:
        result.previous_ms = dict.fromkeys(tenants, 0)
        result.previous_ms.update(offsets.fetchall())
    if plan.snapshot_jobs:  # they read this batch's hashes back
        result.snapshots += _write_jobs(conn, plan.snapshot_jobs, snapshot_every, resolve, registry)
        conn.commit()
    return plan


def _expected(known: dict[tuple[str, str], Head]) -> tuple[Any, ...]:
    """``statements.EXPECT_HEADS``'s parameters: the threads in key order, their heads as columns, their count."""
    order = sorted(known)
    heads = [known[t] for t in order]
    return ([t for t, _ in order], [th for _, th in order], [h[0] for h in heads], [h[1] for h in heads],
            [h[2] for h in heads], [h[3] for h in heads], [orjson.dumps(h[4]).decode() for h in heads], len(order))


def write_snapshots(conn: psycopg.Connection, jobs: Iterable[SnapshotJob], *, snapshot_every: int = 100,
                    resolve: snapshots.BlobSource | None = None, registry: Registry | None = None) -> int:
    """Write the snapshots of committed batches (``write_batch(defer_snapshots=True)``) in one transaction.

    Returns how many were written. Each job reads what it needs from PostgreSQL, so it may run any
    time after its batch committed, on any connection; a job lost (a crash) leaves its seqs without
    a snapshot, which a replay covers from the one before.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError("write_snapshots commits its own transaction: call it outside one")
    try:
        written = _write_jobs(conn, jobs, snapshot_every, resolve, registry)
        conn.commit()
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        raise
    return written


def _write_jobs(conn: psycopg.Connection, jobs: Iterable[SnapshotJob], snapshot_every: int,
                resolve: snapshots.BlobSource | None, registry: Registry | None) -> int:
    return sum(snapshots.write_due(conn, tenant, thread, old_seq, new_seq, chained, snapshot_every, resolve, registry)
               for tenant, thread, old_seq, new_seq, chained in jobs)


@dataclass(slots=True)
class _Plan:
    """What a batch writes for its threads, decided under their row locks, written by ``_apply``."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    hash_updates: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    conflict_rows: list[tuple[Any, ...]] = field(default_factory=list)
    snapshot_jobs: list[SnapshotJob] = field(default_factory=list)
    #: The threads' heads once the batch is committed (``KnownHeads``).
    heads: dict[tuple[str, str], Head] = field(default_factory=dict)


def _lock_threads(conn: psycopg.Connection, order: list[tuple[str, str]]) -> psycopg.Cursor[Any]:
    """Create missing ``threads`` rows and lock them all, in key order (so workers never deadlock).

    Returns the cursor of their heads, to be fetched (in pipeline mode it is not waited for here).
    """
    tenants = [t for t, _ in order]
    thread_ids = [th for _, th in order]
    conn.execute(statements.INSERT_THREADS, (tenants, thread_ids))
    return conn.execute(statements.LOCK_THREADS, (tenants, thread_ids))


def _plan_threads(conn: psycopg.Connection, by_thread: dict[tuple[str, str], list[Item]],
                  heads: dict[tuple[str, str], tuple[Any, ...]], result: BatchResult,
                  key: bytes | None, snapshot_every: int) -> _Plan:
    # Which incoming seqs may already be stored? Fetch their bodies to compare.
    probe: list[tuple[str, str, int]] = []
    for (t, th), its in by_thread.items():
        if max_seq := heads[(t, th)][2]:
            probe += [(t, th, it.event.seq) for it in its if it.event.seq <= max_seq]
    stored: dict[tuple[str, str, int], bytes] = {}
    if probe:
        for t, th, s, b in conn.execute(
            statements.STORED_BODIES,
            ([p[0] for p in probe], [p[1] for p in probe], [p[2] for p in probe]),
        ):
            stored[(t, th, s)] = bytes(b)

    unchained = _load_unchained(conn, [(t, th, h[0]) for (t, th), h in heads.items() if h[2] > h[0]])
    plan = _Plan()
    rows, conflict_rows, updates, hash_updates = plan.rows, plan.conflict_rows, plan.updates, plan.hash_updates
    for (tenant, thread), its in by_thread.items():
        last_seq, last_hash, max_seq, status, branches = heads[(tenant, thread)]
        head_hash = bytes(last_hash) if last_hash is not None else GENESIS
        fresh: dict[int, Item] = {}
        for it in sorted(its, key=_seq_of):
            seq = it.event.seq
            existing = stored.get((tenant, thread, seq))
            if existing is None and seq in fresh:
                existing = fresh[seq].body
            if existing is None and seq <= last_seq:
                # Below the chained head every seq is stored, unless the archiver moved it to S3
                # (projections.archive). It cannot be compared here: a conflict (stored side NULL, the
                # thread fenced), never a second row of that seq, never dropped.
                conflict_rows.append((tenant, thread, seq, it.stream_id, None, it.body))
                result.conflicts.append((tenant, thread, seq))
                continue
            if existing is None:
                fresh[seq] = it
            elif existing == it.body:
                result.duplicates += 1
            else:
                conflict_rows.append((tenant, thread, seq, it.stream_id, existing, it.body))
                result.conflicts.append((tenant, thread, seq))
        # Extend the verified chain as far as the new events, and ones stored earlier without a
        # hash (their gap is now filled), allow.
        waiting = unchained.get((tenant, thread), {})
        chained: list[Event] = []
        seq = last_seq
        new_count = len(fresh)
        while True:
            nxt = seq + 1
            if nxt in fresh:
                it = fresh.pop(nxt)
                h = link(head_hash, it.event, key, it.canonical)
                rows.append((*it.row, head_hash, h))
                chained.append(it.event)
            elif nxt in waiting:
                ev = waiting.pop(nxt)
                h = link(head_hash, ev, key)
                hash_updates.append((tenant, thread, nxt, head_hash, h))
                chained.append(ev)
            else:
                break
            head_hash, seq = h, nxt
        if fresh:  # an earlier seq is still in flight
            rows.extend((*it.row, None, None) for it in fresh.values())
        # Status and node move as in the fold (journal.lifecycle), event by event from the stored position.
        pos = old = lifecycle.Position(status, tuple(branches))
        for ev in chained:
            pos = lifecycle.step(pos, ev.type, ev.payload, ev.node)
        top = max(max_seq, seq, *fresh)
        updates.append((tenant, thread, seq, head_hash if seq else None, top, pos.status, pos.node,
                        orjson.dumps(pos.branches).decode() if pos.branches != old.branches else None, new_count))
        plan.heads[(tenant, thread)] = (seq, head_hash if seq else None, top, pos.status, list(pos.branches))
        result.inserted += new_count
        if seq > last_seq:
            result.heads[(tenant, thread)] = seq
            if seq // snapshot_every > last_seq // snapshot_every:
                plan.snapshot_jobs.append((tenant, thread, last_seq, seq, chained))
    return plan


def _apply(conn: psycopg.Connection, plan: _Plan) -> None:
    """The writes of ``plan`` that need no result (its rows staged by ``_stage_events``, or a small batch's here)."""
    if len(plan.rows) > SMALL_BATCH:
        conn.execute(statements.INSERT_EVENTS)
    elif plan.rows:
        conn.execute(statements.INSERT_EVENTS_UNNEST, [list(col) for col in zip(*plan.rows, strict=True)])
    if plan.hash_updates:
        conn.execute(
            statements.CHAIN_HASHES,
            [list(col) for col in zip(*plan.hash_updates, strict=True)])
    if plan.updates:
        conn.execute(
            statements.ADVANCE_THREADS,
            [list(col) for col in zip(*plan.updates, strict=True)])
    if plan.conflict_rows:
        conn.cursor().executemany(statements.INSERT_CONFLICT, plan.conflict_rows)
        fenced = sorted({(t, th) for t, th, *_ in plan.conflict_rows})
        conn.execute(
            statements.FENCE_THREADS,
            ([f[0] for f in fenced], [f[1] for f in fenced]))


def _load_unchained(conn: psycopg.Connection, threads: list[tuple[str, str, int]],
                    ) -> dict[tuple[str, str], dict[int, Event]]:
    """Per (tenant, thread, verified head): events stored above the head without a hash, waiting for an
    earlier seq (another worker wrote later seqs first). One query for the batch, not one per thread."""
    out: dict[tuple[str, str], dict[int, Event]] = defaultdict(dict)
    if threads:
        for t, th, s, ts, b in conn.execute(
            statements.UNCHAINED,  # one index range scan per thread (statements.UNCHAINED says why)
            [list(col) for col in zip(*threads, strict=True)]):
            out[(t, th)][s] = codec.decode_body(t, th, s, ts, bytes(b))
    return out
