"""The durable tier as the client reads it: a thread's events and latest snapshot in PostgreSQL.

The client answers ``read``, ``wait`` and ``resume`` from every tier, so it needs the events
that have left Redis. This module reads them, and only them: the schema belongs to
``projections`` (its SQLAlchemy tables and migrations); the few statements of ``journal`` (the
client's reads, and the embedded server's database bootstrap) are named here, once, and
``projections``/``replayer`` use the reads too.

Reads go through row-level security. The login of ``JOURNAL_DATABASE_URL`` is either

* a **tenant reader** (``agent-journal tenant create``): bound to one tenant in
  ``journal.tenant_roles``; it reads as itself and sees that tenant only; or
* an **administrative user**: it ``SET ROLE journal_app`` and names the tenant per
  transaction (``set_config('journal.tenant', …, true)``), so a pooled connection never
  carries one tenant's scope to the next read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from journal import codec
from journal.archive import ArchiveRef
from journal.errors import AccessDenied, JournalError, StoreUnavailable
from journal.events import Event
from journal.keys import validate_id
from journal.state import ChunkLoader, Snapshot, ThreadState, decode_snapshot

APP_ROLE = "journal_app"

#: A thread's stored events in a seq range. ``body`` is the hashed truth; the JSONB copy is not read.
#: Bodies are fetched in binary (``execute(..., binary=True)``): as text a bytea comes hex-encoded, twice
#: its size; 1,003 rows of a LangGraph thread (1 MB) took 3.1 ms as text, 1.2 ms in binary.
EVENTS_SQL = ("SELECT seq, ts_ms, body FROM journal.events WHERE tenant_id = %s AND thread_id = %s "
              "AND seq > %s AND seq <= %s ORDER BY seq")
#: The highest stored seq of a thread (rows above the chained head count: they are durable too).
MAX_SEQ_SQL = "SELECT max(seq) FROM journal.events WHERE tenant_id = %s AND thread_id = %s"
#: Where an archived thread's history went (``journal.archive``): the newest manifest and the archive's head.
ARCHIVE_SQL = "SELECT manifest_key, last_seq, last_hash FROM journal.archives WHERE tenant_id = %s AND thread_id = %s"
#: The newest snapshot at or below a seq.
SNAPSHOT_SQL = ("SELECT state FROM journal.snapshots WHERE tenant_id = %s AND thread_id = %s AND seq <= %s "
                "ORDER BY seq DESC LIMIT 1")
#: A resume's one statement per thread: a header row (seq NULL) with the durable head and the
#: newest snapshot, then the stored events after that snapshot, in seq order.
LATEST_SQL = (
    "WITH snap AS (SELECT seq, state FROM journal.snapshots WHERE tenant_id = %(tenant)s AND thread_id = %(thread)s "
    "ORDER BY seq DESC LIMIT 1), base AS (SELECT coalesce(max(seq), 0) AS seq FROM snap) "
    # The durable head: the highest stored seq, or the archive's head if higher (rows archived to S3).
    "SELECT NULL::bigint, greatest((SELECT max(seq) FROM journal.events WHERE tenant_id = %(tenant)s "
    "AND thread_id = %(thread)s), (SELECT last_seq FROM journal.archives WHERE tenant_id = %(tenant)s "
    "AND thread_id = %(thread)s)), (SELECT state FROM snap) "
    # A lateral join on an aggregate, ordered by seq: written as ``seq > (SELECT …)``, or unordered, the
    # bound was a filter over every event of the thread (EXPLAIN), not a bound of the primary key scan.
    "UNION ALL SELECT e.seq, e.ts_ms, e.body FROM base CROSS JOIN LATERAL (SELECT seq, ts_ms, body "
    "FROM journal.events WHERE tenant_id = %(tenant)s AND thread_id = %(thread)s AND seq > base.seq ORDER BY seq) e "
    "ORDER BY 1 NULLS FIRST")
#: Sealed snapshot chunks of a thread by name (``journal.state.decode_snapshot`` asks for those it lacks).
CHUNKS_SQL = ("SELECT chunk_id, body FROM journal.snapshot_chunks WHERE tenant_id = %s AND thread_id = %s "
              "AND chunk_id = ANY(%s)")
#: The tenant a login is bound to (a tenant reader sees its own row of ``tenant_roles`` only).
BOUND_TENANT_SQL = "SELECT tenant_id FROM journal.tenant_roles WHERE role_name = current_user"
#: The reader's session plans its prepared reads once (see ``DurableReader._configure``).
GENERIC_PLANS_SQL = "SET plan_cache_mode = force_generic_plan"
#: Name the tenant an administrative reader sees, for this transaction only (``is_local``).
SCOPE_SQL = "SELECT set_config('journal.tenant', %s, true)"
#: An administrative login becomes the pooled application role, to which row-level security applies.
SET_APP_ROLE_SQL = sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE))
#: Whether a database exists (the embedded server's bootstrap, as ``postgres``).
DATABASE_EXISTS_SQL = "SELECT 1 FROM pg_database WHERE datname = %s"
#: ``.format(Identifier(name))``: create it.
CREATE_DATABASE_SQL = sql.SQL("CREATE DATABASE {}")
#: Larger than any seq: the open upper bound of a range.
NO_LIMIT = 2**63 - 1


def archive_ref(row: tuple[Any, ...] | None) -> ArchiveRef | None:
    """The stub row of :data:`ARCHIVE_SQL` as an ``ArchiveRef`` (None: the thread was never archived)."""
    return None if row is None else ArchiveRef(str(row[0]), int(row[1]), bytes(row[2]))


#: A thread's PostgreSQL part of a resume: durable head, newest snapshot, the stored events after it.
Latest = tuple[int, ThreadState | None, list[Event]]


def decode_rows(tenant: str, thread: str, rows: list[tuple[Any, ...]]) -> list[Event]:
    return [codec.decode_body(tenant, thread, s, ts, bytes(b)) for s, ts, b in rows]


def load_events(conn: psycopg.Connection, tenant: str, thread: str, after: int, upto: int) -> list[Event]:
    """The stored events with ``after < seq <= upto``, in seq order, read on ``conn`` (:data:`EVENTS_SQL`)."""
    return decode_rows(tenant, thread, conn.execute(EVENTS_SQL, (tenant, thread, after, upto), binary=True).fetchall())


def chunk_loader(conn: psycopg.Connection, tenant: str, thread: str) -> ChunkLoader:
    """Reads a thread's snapshot chunks on ``conn`` (in its open transaction, so under its tenant scope)."""
    def load(ids: list[bytes]) -> dict[bytes, bytes]:
        return {bytes(i): bytes(b) for i, b in conn.execute(CHUNKS_SQL, (tenant, thread, ids), binary=True).fetchall()}
    return load


def decode_snapshot_row(conn: psycopg.Connection, tenant: str, thread: str, data: bytes) -> Snapshot:
    """A stored snapshot, its chunks read (when not cached) on the connection that read the row."""
    return decode_snapshot(data, tenant, thread, chunk_loader(conn, tenant, thread))


class DurableReader:
    """Thread reads from PostgreSQL for the client, through a small pool opened on first use."""

    def __init__(self, url: str, *, max_size: int = 4) -> None:
        self.url = url
        self._max_size = max_size
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._lock = threading.Lock()
        #: The tenant this login is bound to, if it is a tenant reader (known once connected).
        self.bound_tenant: str | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _configure(self, conn: psycopg.Connection) -> None:
        # Every read is a key lookup by (tenant, thread): prepared at once, with one generic plan (partitions
        # pruned when it runs), it is not planned again at each call over the 16 partitions of ``events``.
        conn.prepare_threshold = 0
        conn.execute(GENERIC_PLANS_SQL)
        row = conn.execute(BOUND_TENANT_SQL).fetchone()
        if row is not None:
            self.bound_tenant = row[0]
        else:
            try:
                conn.execute(SET_APP_ROLE_SQL)
            except psycopg.Error as e:
                raise AccessDenied(f"the PostgreSQL login of JOURNAL_DATABASE_URL is neither a tenant reader nor "
                                   f"allowed to SET ROLE {APP_ROLE} ({e}); use the tenant URL from "
                                   "`agent-journal tenant create`, or run `agent-journal migrate` as an admin") from e
        conn.commit()

    def _open(self) -> psycopg_pool.ConnectionPool:
        with self._lock:
            if self._pool is None:
                pool = psycopg_pool.ConnectionPool(
                    self.url, min_size=0, max_size=self._max_size, open=False, configure=self._configure,
                    kwargs={"connect_timeout": 5}, timeout=10, name="journal-durable")
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    @contextmanager
    def _scoped(self, tenant: str) -> Iterator[psycopg.Connection]:
        """A read-only, repeatable-read transaction that sees ``tenant``'s rows (and only those)."""
        validate_id(tenant, "tenant")
        try:
            with self._open().connection() as conn:
                if self.bound_tenant is not None and self.bound_tenant != tenant:
                    raise AccessDenied(f"this PostgreSQL login reads tenant {self.bound_tenant!r} only, not "
                                       f"{tenant!r}; use that tenant's own credentials")
                conn.read_only = True
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                # Pipelined: BEGIN, the scope and the first query go out in one round trip, COMMIT in one more.
                with conn.pipeline(), conn.transaction():
                    if self.bound_tenant is None:
                        conn.execute(SCOPE_SQL, (tenant,))
                    yield conn
        except psycopg_pool.PoolTimeout as e:
            raise StoreUnavailable(f"PostgreSQL unreachable (no connection within 10 s): {e}. Check "
                                   "JOURNAL_DATABASE_URL and that the server runs (`agent-journal status`).") from e
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL failed while reading tenant {tenant}: {e}") from e
        except psycopg.errors.InsufficientPrivilege as e:
            raise AccessDenied(f"PostgreSQL refused a read of tenant {tenant}: {e}") from e
        except psycopg.errors.UndefinedTable as e:
            raise JournalError(f"the journal schema is missing in PostgreSQL ({e}); run `agent-journal migrate`") from e

    def events(self, tenant: str, thread: str, after: int, upto: int | None = None) -> list[Event]:
        """The stored events with ``after < seq <= upto`` (no upper bound if None), in seq order."""
        with self._scoped(tenant) as conn:
            return load_events(conn, tenant, thread, after, NO_LIMIT if upto is None else upto)

    def max_seq(self, tenant: str, thread: str) -> int:
        """The highest durable seq of the thread, in ``events`` or in its S3 archive (0 if none)."""
        with self._scoped(tenant) as conn:
            return _durable_top(conn, tenant, thread)

    def latest(self, tenant: str, thread: str) -> Latest:
        """The highest durable seq of the thread (``events`` or its S3 archive), its newest snapshot
        and the stored events after it."""
        return self.latest_many(tenant, (thread,))[thread]

    def latest_many(self, tenant: str, threads: Iterable[str]) -> dict[str, Latest]:
        """:meth:`latest` of several threads of a tenant, from one consistent view.

        One pooled connection, one pipelined transaction, one statement per thread: a resume needs
        nothing else from PostgreSQL (chunks only when this process has not decoded them yet).
        """
        out: dict[str, Latest] = {}
        with self._scoped(tenant) as conn:
            cursors = [(t, conn.execute(LATEST_SQL, {"tenant": tenant, "thread": t}, binary=True))
                       for t in dict.fromkeys(threads)]
            for thread, cur in cursors:
                rows = cur.fetchall()
                _, top, snap = rows[0]
                state = decode_snapshot_row(conn, tenant, thread, snap).state if snap is not None else None
                out[thread] = int(top or 0), state, decode_rows(tenant, thread, rows[1:])
        return out

    def archived(self, tenant: str, thread: str) -> ArchiveRef | None:
        """Where the thread's archived history is, or None if it has none."""
        with self._scoped(tenant) as conn:
            return archive_ref(conn.execute(ARCHIVE_SQL, (tenant, thread)).fetchone())


def _durable_top(conn: psycopg.Connection, tenant: str, thread: str) -> int:
    # An archived thread may have no rows left in ``events``: its head is the archive's.
    row = conn.execute(MAX_SEQ_SQL, (tenant, thread)).fetchone()
    ref = archive_ref(conn.execute(ARCHIVE_SQL, (tenant, thread)).fetchone())
    return max(int(row[0] or 0) if row else 0, ref.last_seq if ref else 0)
