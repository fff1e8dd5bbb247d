"""Where a replay reads history from: the tiers of the resumption cascade.

A :class:`HistorySource` answers two questions about one thread: how far does this tier go
(``head``) and which events does it hold in a seq range (``events``). The replayer asks the
tiers in order — Redis (the hot tail, not yet projected), PostgreSQL (the durable truth),
and the S3 archive (cold history, :class:`ArchiveSource`, :class:`S3ArchiveSource`) — and merges
them by seq.

Sources return events exactly as stored: an offloaded payload (``event.blob``) is *not*
fetched here; the replayer resolves blobs in one place before folding, so every path folds
the same events.

PostgreSQL is read through a role that row-level security applies to: the pooled
application role ``journal_app`` with ``journal.tenant`` set per transaction, or a tenant
reader's own login (whose binding wins over any setting). Transactions are read-only and
``REPEATABLE READ``, so a snapshot, the events after it and the thread's head are one
consistent view even while the projector commits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import psycopg
import redis

from journal import codec, durable, keys, ops
from journal.archive import ArchiveReader, ArchiveRef, ObjectStore
from journal.client import drive
from journal.errors import AccessDenied, CodecError, StoreUnavailable
from journal.events import Event
from journal.settings import Settings
from journal.state import ThreadState
from projections import db
from replayer.verify import NOT_LOADED, StoredEvent

#: Entries per XREVRANGE page when walking the hot tail backwards.


@runtime_checkable
class HistorySource(Protocol):
    """One tier of a thread's history."""

    def head(self, tenant: str, thread: str) -> int:
        """The highest seq this tier knows for the thread (0 if none)."""
        ...

    def events(self, tenant: str, thread: str, after: int, upto: int | None = None) -> Iterator[Event]:
        """The events with ``after < seq <= upto`` (no upper bound if None) this tier holds, in seq order.

        Blob payloads are left unresolved; a tier may hold only part of the range (gaps are
        the caller's business: it merges tiers and then checks the range is complete).
        """
        ...


@runtime_checkable
class ArchiveSource(HistorySource, Protocol):
    """The S3 cold tier: sealed segments under ``{tenant}/archive/{thread}/`` with a manifest.

    Returns the same ``Event`` values the other tiers return (decoded from the archived ``body``
    bytes, which carry the chain), covers ``1..head`` of what it archived, and is read-only.
    The replayer consults it for seqs below what PostgreSQL still holds; pass one to
    ``Replayer(archive=…)`` (``Replayer.from_settings`` does, when S3 is configured).
    """

    def stored_events(self, tenant: str, thread: str, upto: int | None = None) -> list[StoredEvent]:
        """The archived rows with their chain hashes (no JSONB copy: it is not archived), for verification."""
        ...


# -- Redis: the hot tail --------------------------------------------------------------------------


class RedisSource:
    """Events still in the tenant's stream (``journal.ops.hot_tail``: a backwards walk that stops early)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def head(self, tenant: str, thread: str) -> int:
        return drive(ops.head(tenant, thread), self.redis)

    def events(self, tenant: str, thread: str, after: int, upto: int | None = None) -> Iterator[Event]:
        top = self.head(tenant, thread)
        return iter(drive(ops.hot_tail(tenant, thread, after, top if upto is None else min(top, upto)), self.redis))


# -- PostgreSQL: the durable truth ----------------------------------------------------------------

# The replayer's statements, all of them (``journal.durable``'s are reused where the same: the events
# of a range, the max seq, the newest snapshot, the bound tenant, the scope).

#: What ``journal.threads`` records of one thread's projected chain.
THREAD_HEAD_SQL = ("SELECT thread_id, last_seq, last_hash, max_seq, status FROM journal.threads "
                   "WHERE tenant_id = %s AND thread_id = %s")
#: The seq of the last stored event appended at or before a time (``events_time_idx``).
SEQ_AT_TIME_SQL = ("SELECT seq FROM journal.events WHERE tenant_id = %s AND thread_id = %s AND appended_at <= %s "
                   "ORDER BY appended_at DESC, seq DESC LIMIT 1")
#: Every thread of a tenant: those in ``threads`` and any that only have events.
#: A thread's events of the given types up to a seq (the few that move its status and node).
EVENTS_OF_TYPES_SQL = ("SELECT seq, ts_ms, body FROM journal.events WHERE tenant_id = %s AND thread_id = %s "
                       "AND seq <= %s AND type = ANY(%s) ORDER BY seq")
#: The console's list of a tenant's threads (``journal.threads`` rows), read through row-level security.
THREAD_LIST_SQL = """
SELECT thread_id, status, last_seq, max_seq, event_count, node, created_at, updated_at, fenced
FROM journal.threads
WHERE tenant_id = %(tenant)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(idle_since)s::timestamptz IS NULL OR updated_at <= %(idle_since)s)
  AND (%(only)s::text[] IS NULL OR thread_id = ANY(%(only)s))
ORDER BY updated_at DESC, thread_id
LIMIT %(limit)s
"""
THREADS_SQL = ("SELECT thread_id FROM journal.threads WHERE tenant_id = %s UNION "
               "SELECT DISTINCT thread_id FROM journal.events WHERE tenant_id = %s ORDER BY 1")
#: A thread's rows with their chain columns and JSONB copy, up to a seq (verification, bundles).
STORED_EVENTS_SQL = ("SELECT seq, ts_ms, body, prev_hash, hash, payload FROM journal.events WHERE tenant_id = %s "
                     "AND thread_id = %s AND seq <= %s ORDER BY seq")

# Audit by tool (``replayer.audit.tool_usage``): the SQL only finds the threads and the window's seqs;
# the counts are the fold's.

#: Threads that named the tool in the window: ``events_tool_idx (tenant_id, tool, appended_at)
#: WHERE tool IS NOT NULL``, whose leading columns are the equality predicates and the window its range.
TOOL_USAGE_SQL = """
SELECT DISTINCT thread_id
FROM journal.events
WHERE tenant_id = %(tenant)s AND tool = %(tool)s AND tool IS NOT NULL
  AND appended_at >= %(since)s AND appended_at < %(until)s
"""

#: Threads with a tool event in the window whose payload is in object storage (its tool is unknown
#: until the blob is read). No index serves it: it scans the tenant's partition for the window
#: (offloaded rows are rare; a partial index on (tenant_id, appended_at) WHERE blob_sha256 IS NOT
#: NULL would make it a lookup).
OFFLOADED_TOOL_THREADS_SQL = """
SELECT DISTINCT thread_id
FROM journal.events
WHERE tenant_id = %(tenant)s AND blob_sha256 IS NOT NULL AND type IN ('tool_call', 'tool_result')
  AND appended_at >= %(since)s AND appended_at < %(until)s
"""

#: The tool events of those threads in the window: ``events_time_idx (tenant_id, thread_id, appended_at)``.
TOOL_EVENTS_IN_WINDOW_SQL = """
SELECT thread_id, seq, appended_at
FROM journal.events
WHERE tenant_id = %(tenant)s AND thread_id = ANY(%(threads)s) AND type IN ('tool_call', 'tool_result')
  AND appended_at >= %(since)s AND appended_at < %(until)s
"""

#: :data:`TOOL_USAGE_SQL`'s plan, as the reader runs it (row-level security included).
EXPLAIN_TOOL_USAGE_SQL = "EXPLAIN " + TOOL_USAGE_SQL


@dataclass(frozen=True, slots=True)
class ThreadHead:
    """What ``journal.threads`` records about a thread's projected chain."""

    thread: str
    last_seq: int
    last_hash: bytes | None
    max_seq: int
    status: str


class PostgresSource:
    """Events, snapshots and chain heads from PostgreSQL, in a role where row-level security applies.

    ``scope(tenant)`` opens one read-only REPEATABLE READ transaction and sets the tenant for
    the pooled ``journal_app`` role; every method joins the scope that is open, or opens a
    short one of its own.
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        # Read-only by construction: a replay or an audit never writes, whatever SQL it builds.
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._scope: str | None = None
        #: The tenant a reader login is bound to (None: the pooled journal_app role, any tenant per scope).
        self.bound_tenant: str | None = None

    @classmethod
    def connect(cls, settings: Settings, *, url: str | None = None) -> PostgresSource:
        """As ``journal_app`` from the settings' URL, or as the login of ``url`` (a tenant reader's own)."""
        if url is None:
            return cls(db.connect(settings, role=db.APP))
        try:
            conn = psycopg.connect(url, connect_timeout=5)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL unreachable with the reader URL: {e}") from e
        source = cls(conn)
        with conn.transaction():
            row = conn.execute(durable.BOUND_TENANT_SQL).fetchone()
        source.bound_tenant = row[0] if row else None
        return source

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def scope(self, tenant: str) -> Iterator[PostgresSource]:
        """One consistent, read-only view of ``tenant``'s rows (reentrant for the same tenant)."""
        keys.validate_id(tenant, "tenant")
        if self.bound_tenant is not None and tenant != self.bound_tenant:
            # Row-level security would show nothing anyway; saying so keeps the other tiers (Redis) out too.
            raise AccessDenied(f"this PostgreSQL login reads tenant {self.bound_tenant!r} only, not {tenant!r}; "
                               "use that tenant's own credentials")
        if self._scope is not None:
            if self._scope != tenant:
                raise RuntimeError(f"a scope for tenant {self._scope} is open; cannot read {tenant} inside it")
            yield self
            return
        try:
            with self.conn.transaction():
                # Transaction-local (is_local = true): a pooled connection never carries it to the next user.
                self.conn.execute(durable.SCOPE_SQL, (tenant,))
                self._scope = tenant
                try:
                    yield self
                finally:
                    self._scope = None
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL failed while reading tenant {tenant}: {e}") from e

    def _rows(self, tenant: str, query: str, params: tuple[Any, ...], *, binary: bool = False,
              ) -> list[tuple[Any, ...]]:
        with self.scope(tenant):
            return self.conn.execute(query, params, binary=binary).fetchall()

    def thread_head(self, tenant: str, thread: str) -> ThreadHead | None:
        rows = self._rows(tenant, THREAD_HEAD_SQL, (tenant, thread))
        if not rows:
            return None
        t, last, h, top, status = rows[0]
        return ThreadHead(t, int(last), bytes(h) if h is not None else None, int(top), status)

    def head(self, tenant: str, thread: str) -> int:
        """The highest stored seq (rows above the chained head included: they are durable too)."""
        rows = self._rows(tenant, durable.MAX_SEQ_SQL, (tenant, thread))
        return int(rows[0][0] or 0)

    def events(self, tenant: str, thread: str, after: int, upto: int | None = None) -> Iterator[Event]:
        # ``body`` is the hashed truth; the JSONB ``payload`` is only its queryable copy and is not read here.
        with self.scope(tenant):
            return iter(durable.load_events(self.conn, tenant, thread, after, _top(upto)))

    def events_of_types(self, tenant: str, thread: str, upto: int, types: list[str]) -> list[Event]:
        """The stored events of ``types`` with ``seq <= upto``, in seq order (blobs unresolved)."""
        rows = self._rows(tenant, EVENTS_OF_TYPES_SQL, (tenant, thread, upto, types), binary=True)
        return durable.decode_rows(tenant, thread, rows)

    def snapshot(self, tenant: str, thread: str, at_or_below: int) -> ThreadState | None:
        """The newest snapshot at or below ``at_or_below``, decoded (None if there is none)."""
        with self.scope(tenant):
            rows = self.conn.execute(durable.SNAPSHOT_SQL, (tenant, thread, at_or_below)).fetchall()
            # Chunks the process has not decoded yet are read in the same scope (same view, same tenant).
            return durable.decode_snapshot_row(self.conn, tenant, thread, rows[0][0]).state if rows else None

    def seq_at_time(self, tenant: str, thread: str, at: datetime) -> int:
        """The seq of the last stored event appended at or before ``at`` (0 if none)."""
        rows = self._rows(tenant, SEQ_AT_TIME_SQL, (tenant, thread, at))
        return int(rows[0][0]) if rows else 0

    def threads(self, tenant: str) -> list[str]:
        """Every thread of the tenant: those recorded in ``threads`` and any that only have events."""
        rows = self._rows(tenant, THREADS_SQL, (tenant, tenant))
        return [r[0] for r in rows]

    def archive_ref(self, tenant: str, thread: str) -> ArchiveRef | None:
        """The stub of the thread's S3 archive (``journal.archives``), or None if it was never archived."""
        rows = self._rows(tenant, durable.ARCHIVE_SQL, (tenant, thread))
        return durable.archive_ref(rows[0] if rows else None)

    def stored_events(self, tenant: str, thread: str, upto: int | None = None) -> Iterator[StoredEvent | BadRow]:
        """The thread's rows with their chain columns and JSONB copy, for verification and bundles.

        A row whose body does not decode is returned as a :class:`BadRow` (verification names it).
        """
        rows = self._rows(tenant, STORED_EVENTS_SQL, (tenant, thread, _top(upto)), binary=True)
        out: list[StoredEvent | BadRow] = []
        for seq, ts, body, prev, h, payload in rows:
            try:
                ev = codec.decode_body(tenant, thread, seq, ts, bytes(body))
            except CodecError as e:
                out.append(BadRow(int(seq), str(e), h is not None))
                continue
            out.append(StoredEvent(ev, bytes(h) if h is not None else b"", bytes(prev) if prev is not None else b"",
                                   payload))
        return iter(out)


# -- S3: the archive -----------------------------------------------------------------------------


class S3ArchiveSource:
    """Archived history (``journal.archive``), found through the stub PostgreSQL keeps of each archived thread.

    The stub is read in the replayer's open PostgreSQL scope, so it is the same consistent view as the
    rows: a thread whose rows an archiver deletes meanwhile is seen wholly before or wholly after.
    Segments are verified against the manifest's SHA-256 as they are read; the chain is the verifier's.
    """

    def __init__(self, pg: PostgresSource, store: ObjectStore) -> None:
        self.pg = pg
        self.reader = ArchiveReader(store)

    def head(self, tenant: str, thread: str) -> int:
        ref = self.pg.archive_ref(tenant, thread)
        return ref.last_seq if ref else 0

    def events(self, tenant: str, thread: str, after: int, upto: int | None = None) -> Iterator[Event]:
        ref = self.pg.archive_ref(tenant, thread)
        return iter(self.reader.events(tenant, thread, ref, after, upto) if ref else [])

    def stored_events(self, tenant: str, thread: str, upto: int | None = None) -> list[StoredEvent]:
        ref = self.pg.archive_ref(tenant, thread)
        if ref is None:
            return []
        rows = self.reader.rows(self.reader.manifest(tenant, thread, ref), 0, upto)
        return [StoredEvent(r.event(tenant, thread), r.hash, r.prev_hash, NOT_LOADED) for r in rows]


def _top(upto: int | None) -> int:
    return durable.NO_LIMIT if upto is None else upto


@dataclass(frozen=True, slots=True)
class BadRow:
    """A stored row whose body cannot be decoded (altered bytes, or a format this reader does not know)."""

    seq: int
    reason: str
    hashed: bool
