"""Cold threads leave PostgreSQL for S3: sealed segments, a manifest, and a stub that stays.

For each thread that is finished (``--status``), quiet for ``idle`` and fully chained
(``last_seq = max_seq``, not fenced), with rows in ``events`` the archive does not hold yet:

1. **read** its rows above what is archived (one REPEATABLE READ view, a server-side cursor, a
   segment of rows at a time) and recompute their chain from the archive's last hash (genesis the
   first time) up to ``threads.last_hash``: a broken chain is never archived;
2. **fold** its state at the head (the newest snapshot + the rows after it, offloaded payloads
   fetched), so a snapshot exactly at the head can stay in PostgreSQL;
3. **upload** each new segment as it is sealed, then the manifest (listing every segment from seq 1);
4. **read back** the manifest and every segment through the readers' own path
   (``journal.archive.ArchiveReader``) and recompute the whole chain from genesis;
5. **switch**, in one transaction under the thread's row lock: write the stub
   (``journal.archives``), keep the head snapshot, delete the archived rows and the older snapshots;
6. **sweep** the snapshot chunks no snapshot left names (``projections.chunks``).

Until step 5 commits, PostgreSQL still holds every row and no reader looks at S3; after it, the
stub names a manifest that was read back. A kill anywhere loses nothing, and a re-run writes the
same bytes to the same keys (keys name seq ranges; encoding is deterministic) and finishes.

**Snapshots.** The head snapshot stays (written here if the policy's K did not land on the
head): ``resume``/``state`` of an archived thread then read PostgreSQL only, and the projector's
next snapshot after a new append folds from it without touching S3. Older snapshots go: they are
derivable from the archive, a replay at an older seq folds from the archive's segments (the one
fold, invariant 7), and keeping them would leave a thread's state history in PostgreSQL when the
point is to move it out.

The ``threads`` row stays as it is (status, head, last hash): a new append continues the chain
from ``threads.last_hash`` as for any thread, and the projector needs no earlier row to accept it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY

from journal import archive as fmt
from journal import durable, keys, logs
from journal.append import resolve_blob
from journal.blobs import BlobStore
from journal.chain import GENESIS, key_bytes
from journal.errors import ArchiveCorrupt, ArchiveError, ConfigError, JournalError
from journal.events import Event
from journal.reducer import Registry, fold, load_registry
from journal.settings import Settings
from journal.state import empty, encode_snapshot
from projections import chunks, db, statements, tables

log = logs.get_logger("projections.archive")

#: Thread statuses that may be archived unless the operator names others.
DEFAULT_STATUSES = ("completed", "failed", "abandoned")
STATUSES = ("active", "paused", "completed", "failed", "abandoned")

_t, _a, _e, _s = tables.threads, tables.archives, tables.events, tables.snapshots

_archived_seq = sa.func.coalesce(_a.c.last_seq, sa.literal_column("0"))
#: Finished, quiet, fully chained threads with rows the archive does not hold yet: their head and the archive's.
CANDIDATES_SQL = tables.compiled(
    sa.select(_t.c.tenant_id, _t.c.thread_id, _t.c.last_seq, _archived_seq)
    .select_from(_t.outerjoin(_a, (_a.c.tenant_id == _t.c.tenant_id) & (_a.c.thread_id == _t.c.thread_id)))
    .where((_t.c.updated_at <= sa.func.now() - sa.bindparam("idle", type_=sa.Interval))
           & (_t.c.status == sa.any_(sa.bindparam("statuses", type_=ARRAY(sa.Text))))
           & (_t.c.last_seq == _t.c.max_seq) & sa.not_(_t.c.fenced)
           & (_t.c.last_seq > _archived_seq)
           & (sa.bindparam("all_tenants", type_=sa.Boolean)
              | (_t.c.tenant_id == sa.any_(sa.bindparam("tenants", type_=ARRAY(sa.Text))))))
    .order_by(_t.c.tenant_id, _t.c.thread_id))
#: The thread's chained head, locked while the archived rows are deleted (the projector takes the same lock).
HEAD_FOR_UPDATE_SQL = tables.compiled(
    sa.select(_t.c.last_seq, _t.c.last_hash)
    .where((_t.c.tenant_id == sa.bindparam("tenant")) & (_t.c.thread_id == sa.bindparam("thread")))
    .with_for_update())
HEAD_SQL = tables.compiled(
    sa.select(_t.c.last_seq, _t.c.last_hash)
    .where((_t.c.tenant_id == sa.bindparam("tenant")) & (_t.c.thread_id == sa.bindparam("thread"))))
#: The rows to archive, with their chain columns.
ROWS_SQL = tables.compiled(
    sa.select(_e.c.seq, _e.c.ts_ms, _e.c.body, _e.c.prev_hash, _e.c.hash)
    .where((_e.c.tenant_id == sa.bindparam("tenant")) & (_e.c.thread_id == sa.bindparam("thread"))
           & (_e.c.seq > sa.bindparam("after")) & (_e.c.seq <= sa.bindparam("upto")))
    .order_by(_e.c.seq))
_stub = postgresql.insert(_a).values(
    tenant_id=sa.bindparam("tenant"), thread_id=sa.bindparam("thread"), manifest_key=sa.bindparam("key"),
    last_seq=sa.bindparam("last_seq"), last_hash=sa.bindparam("last_hash"), event_count=sa.bindparam("count"),
    segments=sa.bindparam("segments"), stored_bytes=sa.bindparam("bytes"), codec_version=sa.bindparam("codec"))
UPSERT_STUB_SQL = tables.compiled(_stub.on_conflict_do_update(
    index_elements=[_a.c.tenant_id, _a.c.thread_id],
    set_={c: _stub.excluded[c] for c in ("manifest_key", "last_seq", "last_hash", "event_count", "segments",
                                         "stored_bytes", "codec_version")} | {"archived_at": sa.func.now()}))
DELETE_ROWS_SQL = tables.compiled(
    sa.delete(_e).where((_e.c.tenant_id == sa.bindparam("tenant")) & (_e.c.thread_id == sa.bindparam("thread"))
                        & (_e.c.seq <= sa.bindparam("upto"))))
DELETE_OLDER_SNAPSHOTS_SQL = tables.compiled(
    sa.delete(_s).where((_s.c.tenant_id == sa.bindparam("tenant")) & (_s.c.thread_id == sa.bindparam("thread"))
                        & (_s.c.seq < sa.bindparam("upto"))))

#: Called at each step with (step, tenant, thread): "uploaded" (read back, rows still in PostgreSQL) and
#: "switched" (committed). Tests inject a crash there; the CLI leaves it None.
Hook = Callable[[str, str, str], None]


@dataclass(frozen=True, slots=True)
class Candidate:
    tenant: str
    thread: str
    last_seq: int
    archived_seq: int

    @property
    def events(self) -> int:
        return self.last_seq - self.archived_seq

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "thread": self.thread, "from_seq": self.archived_seq + 1,
                "to_seq": self.last_seq, "events": self.events}


@dataclass(frozen=True, slots=True)
class Archived:
    """One thread moved (or, with ``error``, left in PostgreSQL and why)."""

    tenant: str
    thread: str
    from_seq: int
    to_seq: int
    events: int
    segments: int = 0
    stored_bytes: int = 0
    manifest: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ArchiveReport:
    threads: list[Archived] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(t.events for t in self.threads if t.error is None)

    @property
    def failed(self) -> list[Archived]:
        return [t for t in self.threads if t.error is not None]

    def to_dict(self) -> dict[str, Any]:
        moved = [t for t in self.threads if t.error is None]
        return {"threads": len(moved), "events": self.events, "stored_bytes": sum(t.stored_bytes for t in moved),
                "segments": sum(t.segments for t in moved), "failed": len(self.failed),
                "seconds": round(self.seconds, 3), "details": [t.to_dict() for t in self.threads]}


def check_statuses(statuses: Sequence[str]) -> tuple[str, ...]:
    bad = [s for s in statuses if s not in STATUSES]
    if bad or not statuses:
        raise ConfigError(f"--status {','.join(statuses) or '(empty)'}: give a comma-separated list of "
                          f"{', '.join(STATUSES)} (default {','.join(DEFAULT_STATUSES)})")
    return tuple(statuses)


def candidates(settings: Settings, idle: timedelta, statuses: Sequence[str] = DEFAULT_STATUSES,
               tenants: Sequence[str] = ()) -> list[Candidate]:
    """The threads an archive run would move, oldest tenant/thread first."""
    for t in tenants:
        keys.validate_id(t, "tenant")
    statuses = check_statuses(statuses)
    with db.connect(settings) as conn:
        rows = conn.execute(CANDIDATES_SQL, {"idle": idle, "statuses": list(statuses), "all_tenants": not tenants,
                                             "tenants": list(tenants)}).fetchall()
        conn.rollback()
    return [Candidate(t, th, int(last), int(done)) for t, th, last, done in rows]


class Archiver:
    """Moves threads' history to S3, one thread at a time, in the order of operations above."""

    def __init__(self, settings: Settings, *, store: BlobStore | None = None, hook: Hook | None = None,
                 registry: Registry | None = None, per_segment: int = fmt.SEGMENT_EVENTS) -> None:
        if not settings.s3_url and store is None:
            raise ConfigError("archive needs object storage: set JOURNAL_S3_URL (or run `agent-journal up`)")
        self.settings = settings
        self.store = store if store is not None else BlobStore.from_settings(settings)
        self.reader = fmt.ArchiveReader(self.store)
        self.key = key_bytes(settings.hash_key)
        self.registry = registry if registry is not None else load_registry(settings.reducers)
        self.hook = hook
        self.per_segment = per_segment

    def run(self, todo: Sequence[Candidate], progress: Callable[[int], None] | None = None) -> ArchiveReport:
        """Archive ``todo``, a thread at a time; ``progress`` gets the events of each segment sealed."""
        report = ArchiveReport()
        started = time.perf_counter()
        with db.connect(self.settings) as conn:
            for c in todo:
                try:
                    done = self.archive_thread(conn, c, progress)
                except JournalError as e:
                    conn.rollback()
                    done = Archived(c.tenant, c.thread, c.archived_seq + 1, c.last_seq, c.events, error=str(e))
                    log.error("archive_failed", tenant=c.tenant, thread=c.thread, error=str(e))
                report.threads.append(done)
        report.seconds = time.perf_counter() - started
        return report

    def archive_thread(self, conn: psycopg.Connection, c: Candidate,
                       progress: Callable[[int], None] | None = None) -> Archived:
        """Archive one thread (steps 1-5 of the module docstring); ``progress`` gets the events of each segment."""
        tenant, thread = c.tenant, c.thread
        p = {"tenant": tenant, "thread": thread}
        # 1-3. read, verify, fold and upload, a segment at a time, in one consistent view: memory holds
        # one segment's rows (and the folded state), not the thread.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            head = conn.execute(HEAD_SQL, p).fetchone()
            ref = durable.archive_ref(conn.execute(durable.ARCHIVE_SQL, (tenant, thread)).fetchone())
            if head is None:
                raise ArchiveError(f"thread {tenant}/{thread} has no threads row; nothing to archive")
            upto, head_hash = int(head[0]), bytes(head[1]) if head[1] is not None else GENESIS
            after = ref.last_seq if ref else 0
            previous = self.reader.manifest(tenant, thread, ref) if ref else None
            base_row = conn.execute(statements.SNAPSHOT_AT_OR_BELOW, (tenant, thread, upto)).fetchone()
            # Incremental snapshots: the base's chunks are read in this view, and reused by the head snapshot.
            base_snap = durable.decode_snapshot_row(conn, tenant, thread, base_row[1]) if base_row else None
            base = base_snap.state if base_snap is not None else empty(tenant, thread)
            if base.last_seq < after:
                raise ArchiveError(f"thread {tenant}/{thread}: no snapshot at its archived head {after}; "
                                   "rebuild its snapshots before archiving more of it")
            state, prev, first_hash = base, ref.last_hash if ref else GENESIS, b""
            sealed: list[fmt.SegmentInfo] = []
            expected = after + 1
            with conn.cursor(name="archive_rows") as cur:
                cur.execute(ROWS_SQL, {**p, "after": after, "upto": upto})
                while batch := cur.fetchmany(self.per_segment):
                    rows = [fmt.ArchivedRow(int(s), int(t), bytes(b), bytes(ph) if ph is not None else b"",
                                            bytes(h) if h is not None else b"") for s, t, b, ph, h in batch]
                    if rows[0].seq != expected or rows[-1].seq != expected + len(rows) - 1:
                        raise ArchiveError(f"thread {tenant}/{thread}: seq {expected} is missing from PostgreSQL; "
                                           f"a gap is never archived. Run `agent-journal verify {tenant} {thread}`")
                    prev = fmt.check_chain(tenant, thread, rows, prev, self.key)
                    first_hash = first_hash or rows[0].hash
                    tail = [self._resolved(r.event(tenant, thread)) for r in rows if r.seq > base.last_seq]
                    state = fold(tail, state, self.registry) if tail else state
                    info, data = fmt.seal(tenant, thread, rows)
                    self.store.put_object(info.key, data)
                    sealed.append(info)
                    expected = rows[-1].seq + 1
                    if progress is not None:
                        progress(len(rows))
            if expected != upto + 1:
                raise ArchiveError(f"thread {tenant}/{thread}: PostgreSQL holds seqs {after + 1}..{expected - 1} of "
                                   f"{after + 1}..{upto}; a gap is never archived. Run `agent-journal verify`")
            if prev != head_hash:
                raise ArchiveCorrupt(f"thread {tenant}/{thread}: the chain of its rows ends in a hash other than "
                                     f"threads.last_hash at seq {upto}; run `agent-journal verify`")
        # The manifest last: until it exists nothing names the segments.
        manifest = fmt.extend(tenant, thread, previous, sealed, first_hash, head_hash)
        mkey = fmt.manifest_key(tenant, thread, upto)
        self.store.put_object(mkey, manifest.to_bytes())
        # 4. read back through the readers' path (a reader of its own: nothing cached), the whole chain from genesis
        back = fmt.ArchiveReader(self.store)
        back.verify(back.manifest(tenant, thread, fmt.ArchiveRef(mkey, upto, head_hash)), self.key)
        self._step("uploaded", tenant, thread)
        # 5. switch: stub, head snapshot, delete — one transaction under the thread's row lock
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        with conn.transaction():
            locked = conn.execute(HEAD_FOR_UPDATE_SQL, p).fetchone()
            if locked is None or int(locked[0]) < upto:
                raise ArchiveError(f"thread {tenant}/{thread} changed under the archiver; run it again")
            conn.execute(UPSERT_STUB_SQL, {**p, "key": mkey, "last_seq": upto, "last_hash": head_hash,
                                           "count": manifest.event_count, "segments": len(manifest.segments),
                                           "bytes": manifest.stored_bytes, "codec": fmt.CODEC_VERSION})
            if base.last_seq != upto:
                # The chunks stay when older snapshots go: the head snapshot references them.
                chunks.share(conn, tenant, thread)
                record, sealed_chunks, _ = encode_snapshot(state, base_snap)
                for ch in sealed_chunks:
                    conn.execute(statements.INSERT_CHUNK, (tenant, thread, ch.id, ch.body))
                conn.execute(statements.INSERT_SNAPSHOT, (tenant, thread, upto, record, head_hash))
            conn.execute(DELETE_ROWS_SQL, {**p, "upto": upto})
            conn.execute(DELETE_OLDER_SNAPSHOTS_SQL, {**p, "upto": upto})
        self._step("switched", tenant, thread)
        # 6. the chunks only the deleted snapshots named (a crash before this leaves them to `sweep-chunks`)
        chunks.sweep_after(conn, tenant, thread)
        log.info("thread_archived", tenant=tenant, thread=thread, from_seq=after + 1, to_seq=upto,
                 segments=len(sealed), manifest=mkey)
        return Archived(tenant, thread, after + 1, upto, upto - after, len(sealed), sum(i.size for i in sealed), mkey)

    def _resolved(self, event: Event) -> Event:
        if event.blob is None:
            return event
        return resolve_blob(event, self.store.get(event.tenant, event.blob))

    def _step(self, step: str, tenant: str, thread: str) -> None:
        if self.hook is not None:
            self.hook(step, tenant, thread)


def archive(settings: Settings, idle: timedelta, statuses: Sequence[str] = DEFAULT_STATUSES,
            tenants: Sequence[str] = (), *, hook: Hook | None = None,
            progress: Callable[[int], None] | None = None) -> ArchiveReport:
    """Archive every candidate thread (see the module docstring); what moved, and what failed and why."""
    todo = candidates(settings, idle, statuses, tenants)
    return Archiver(settings, hook=hook).run(todo, progress)
