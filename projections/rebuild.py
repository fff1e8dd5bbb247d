"""Rebuild everything derived from ``journal.events`` (``threads`` rows, ``snapshots``), live, blue/green.

After a reducer change or a projection bug, ``agent-journal rebuild`` folds every thread again with
the one fold (``journal.reducer``, the registry of ``JOURNAL_REDUCERS``, as the projector's
snapshots) while agents append and projectors run:

1. **Green build.** Per thread, events are read in seq order and folded into the shadow tables
   ``journal.rebuild_threads`` / ``journal.rebuild_snapshots``, a chunk per transaction. A shadow
   row's ``last_seq`` is how far its thread got, so a rebuild killed at any instant (SIGKILL
   included) resumes there: the next run reopens the thread from its newest shadow snapshot.
   Tenants are served round-robin, a chunk each (``chunk`` events), and ``throttle`` caps the
   events folded per second over all of them, so one huge tenant stalls neither the other
   tenants' rebuilds nor, through the machine's CPU and PostgreSQL, their projection.
2. **Catch up.** Passes over the threads whose events moved past their shadow row (the live
   projector kept writing) until a pass has little left to fold.
3. **Swap, per tenant, in one transaction.** Every ``threads`` row of the tenant is locked
   ``FOR UPDATE`` in key order, the order the projector's batches lock them in: a batch of the
   tenant either committed before (its events are then folded into the shadow here, under the
   lock) or waits and then continues from the swapped rows. Nothing the projector writes is lost
   or counted twice. The live rows and snapshots that differ from the shadow are replaced; the
   old ones serve until the COMMIT; the tenant's shadow rows go in the same transaction.

An archived thread's history below the archive's head is read from its segments in S3 (as a replay
reads it; without ``JOURNAL_S3_URL`` archived threads are left as they are), and of the snapshots at
or below that head it keeps the one at the head only, as the archiver leaves it.

Only chained events are folded (seqs 1..n, each with its hash), as the projector does; events
stored above a gap count in ``event_count``/``max_seq`` only. A thread's status and node move by
``journal.lifecycle`` on the payload as stored, as in the projector's batch. A custom reducer that
raises stops that thread's snapshots and is dead-lettered as by the projector
(``reducer:{thread}:{seq}``); a payload in object storage that cannot be read stops them too.

``dry_run`` writes nothing: each thread is folded in memory and compared with the live rows, and
the report says per tenant what a rebuild would change.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import psycopg

from journal import codec, durable, lifecycle, logs
from journal.archive import ArchiveReader, Manifest
from journal.blobs import BlobStore, s3_client
from journal.errors import ConfigError, JournalError, StoreUnavailable
from journal.keys import validate_id
from journal.reducer import ReducerError, Registry, apply, load_registry
from journal.settings import Settings
from journal.state import Chunk, Snapshot, ThreadState, empty, encode_snapshot
from projections import chunks, db, metrics, statements
from projections.snapshots import BlobSource
from projections.worker import SnapshotBlobs

log = logs.get_logger("projections.rebuild")

#: Threads read per page of a tenant's listing.
PAGE = 500
#: A catch-up pass that folded fewer events than this is followed by the swap (the rest is folded under
#: the row locks, so the projector of that tenant waits at most for this many events' fold).
SWAP_BELOW = 2000
#: Catch-up passes at most before the swap, however busy the tenant (the swap then folds the rest).
MAX_CATCHUP_PASSES = 5


@dataclass(frozen=True, slots=True)
class RebuildOptions:
    """What to rebuild and how fast."""

    #: Tenants to rebuild (validated); empty: every tenant with threads.
    tenants: tuple[str, ...] = ()
    #: Fold and compare, write nothing.
    dry_run: bool = False
    #: Events folded per second, over all tenants; None: as fast as it goes.
    throttle: float | None = None
    #: Events per transaction (and per round-robin turn).
    chunk: int = 2000
    #: Discard the shadow a killed rebuild left (e.g. after changing the reducer again) instead of resuming.
    restart: bool = False

    def __post_init__(self) -> None:
        for t in self.tenants:
            validate_id(t, "tenant")
        if self.throttle is not None and not self.throttle > 0:
            raise ConfigError(f"throttle must be a positive number of events per second, got {self.throttle}")
        if self.chunk < 1:
            raise ConfigError(f"chunk must be at least 1 event, got {self.chunk}")


@dataclass(slots=True)
class TenantReport:
    """What the rebuild of one tenant folded and changed (or, in a dry run, would change)."""

    tenant: str
    events: int = 0
    threads: int = 0
    threads_changed: int = 0
    snapshots_added: int = 0
    snapshots_removed: int = 0
    #: chunks no snapshot named once the swap replaced the snapshots that did
    chunks_swept: int = 0
    swapped: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Progress:
    """The rebuild's position, reported after every chunk."""

    done: int
    total: int
    rate: float
    tenant: str


@dataclass(slots=True)
class _Thread:
    """One thread's fold in progress: its lifecycle position, chained head and state (None: snapshots stopped)."""

    tenant: str
    thread: str
    pos: lifecycle.Position = field(default_factory=lifecycle.Position)
    last_seq: int = 0
    last_hash: bytes | None = None
    state: ThreadState | None = None
    #: The last snapshot folded (incremental snapshots chain on it, as the projector's do) and the
    #: chunks sealed since the last write: the live and the rebuilt snapshots must be the same bytes.
    snap: Snapshot | None = None
    chunks: list[Chunk] = field(default_factory=list)
    #: Up to which seq the history is in the S3 archive (0: none), and the archive's manifest. An archived
    #: thread keeps one snapshot at or below that seq, at it, as the archiver leaves it.
    archived: int = 0
    manifest: Manifest | None = None


def snapshot_blobs(settings: Settings) -> SnapshotBlobs:
    """Offloaded payloads for a fold outside the projector, read as the projector's snapshots read them."""
    return SnapshotBlobs(BlobStore(s3_client(settings, read_timeout=5, attempts=1), settings.s3_bucket)
                         if settings.s3_url else None)


class Rebuilder:
    """One rebuild run over PostgreSQL (``run``); a connection of its own, as ``journal_writer``."""

    def __init__(self, settings: Settings, options: RebuildOptions | None = None, *,
                 on_progress: Callable[[Progress], None] | None = None, registry: Registry | None = None,
                 resolve: BlobSource | None = None) -> None:
        self.settings = settings
        self.options = options or RebuildOptions()
        self.every = settings.snapshot_every
        self.registry = registry if registry is not None else load_registry(settings.reducers)
        self.resolve = resolve if resolve is not None else snapshot_blobs(settings)
        #: Archived history is folded from the archive's segments; without object storage archived threads are
        #: left as they are (their history cannot be read).
        self.archive = ArchiveReader(BlobStore.from_settings(settings)) if settings.s3_url else None
        self.on_progress = on_progress
        self.conn: psycopg.Connection | None = None
        o = self.options
        #: Under a throttle, turns of at most a quarter second's worth of events: a steady rate, not bursts.
        self.chunk = min(o.chunk, max(1, int(o.throttle / 4))) if o.throttle else o.chunk

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> list[TenantReport]:
        """Rebuild (or dry-run) every selected tenant, round-robin; a report per tenant, in tenant order."""
        with db.connect(self.settings) as conn:
            self.conn = conn
            try:
                return self._run(conn)
            except psycopg.OperationalError as e:
                raise StoreUnavailable(f"PostgreSQL failed during the rebuild: {e}. What was folded and committed is "
                                       "kept: run the rebuild again to resume.") from e
            finally:
                self.conn = None

    def _run(self, conn: psycopg.Connection) -> list[TenantReport]:
        o = self.options
        tenants = list(o.tenants) or [r[0] for r in conn.execute(statements.REBUILD_TENANTS)]
        if o.restart and not o.dry_run:
            for t in tenants:
                conn.execute(statements.CLEAR_SHADOW_SNAPSHOTS, (t,))
                conn.execute(statements.CLEAR_SHADOW_THREADS, (t,))
        totals = {t: (int(n), int(d)) for t, n, d in conn.execute(statements.REBUILD_TOTALS, (tenants,))}
        conn.commit()
        total = sum(n - (0 if o.dry_run else d) for n, d in totals.values())
        reports = {t: TenantReport(t) for t in tenants}
        work = {t: (self._dry_tenant if o.dry_run else self._tenant)(conn, reports[t]) for t in tenants}
        turn: deque[str] = deque(tenants)
        started = time.monotonic()
        done = 0
        metrics.REBUILD_REMAINING.set(total)
        while turn:
            tenant = turn.popleft()
            t0 = time.monotonic()
            try:
                n = next(work[tenant])
            except StopIteration:
                continue
            finally:
                reports[tenant].seconds += time.monotonic() - t0
            turn.append(tenant)
            done += n
            total = max(total, done)
            metrics.REBUILD_EVENTS.labels(tenant).inc(n)
            metrics.REBUILD_REMAINING.set(total - done)
            elapsed = time.monotonic() - started
            if self.on_progress is not None:
                self.on_progress(Progress(done, total, done / elapsed if elapsed > 0 else 0.0, tenant))
            if o.throttle:
                # Sleep until the events folded so far are within the rate: smooth, whatever the chunk.
                ahead = started + done / o.throttle - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        metrics.REBUILD_REMAINING.set(0)
        return [reports[t] for t in tenants]

    # -- one tenant: build, catch up, swap -----------------------------------------------------------

    def _tenant(self, conn: psycopg.Connection, report: TenantReport) -> Iterator[int]:
        """Build the tenant's shadow a chunk per transaction (yielding events folded), catch up, swap."""
        passes = 0
        while True:
            folded = 0
            listing = statements.REBUILD_PENDING if self.archive else statements.REBUILD_PENDING_NOT_ARCHIVED
            for n in self._pass(conn, report.tenant, listing, {}):
                folded += n
                report.events += n
                yield n
            passes += 1
            if folded < SWAP_BELOW or passes > MAX_CATCHUP_PASSES:
                break
        n = self._swap(conn, report)
        report.events += n
        yield n

    def _pass(self, conn: psycopg.Connection, tenant: str, listing: str, params: dict[str, Any],
              *, commit: bool = True) -> Iterator[int]:
        """Fold every listed thread up to its events; commit (and yield) every ``chunk`` events."""
        budget = self.chunk
        pending = 0
        after = ""
        while True:
            page = conn.execute(listing, {"tenant": tenant, "after": after, "limit": PAGE, **params}).fetchall()
            if not page:
                break
            for thread, shadow_seq in page:
                after = thread
                th = self._open(conn, tenant, thread, shadow_seq)
                while True:
                    # Under the swap's locks nothing commits midway: every advance may take a whole chunk.
                    limit = max(budget - pending, 1) if commit else budget
                    n, caught_up = self._advance(conn, th, limit, write=True)
                    pending += n
                    if pending >= budget and commit:
                        conn.commit()
                        yield pending
                        pending = 0
                    if caught_up:
                        break
        if commit:
            conn.commit()
        if pending:
            yield pending

    def _swap(self, conn: psycopg.Connection, report: TenantReport) -> int:
        """Fold what is left under the tenant's row locks and replace the live rows that differ; one transaction."""
        tenant = report.tenant
        locked = [r[0] for r in conn.execute(statements.SWAP_LOCK, (tenant,))]
        # Threads the projector moved since the last pass: folded now, while no batch of them can commit.
        listing = statements.REBUILD_PENDING_LOCKED if self.archive else statements.REBUILD_PENDING_LOCKED_NOT_ARCHIVED
        folded = sum(self._pass(conn, tenant, listing, {"locked": locked}, commit=False))
        params = {"tenant": tenant, "locked": locked}
        report.threads = len(locked)
        report.threads_changed = conn.execute(statements.SWAP_THREADS, params).rowcount
        dropped = conn.execute(statements.SWAP_DROP_SNAPSHOTS, params).fetchall()
        report.snapshots_removed = len(dropped)
        report.snapshots_added = conn.execute(statements.SWAP_ADD_SNAPSHOTS, params).rowcount
        conn.execute(statements.CLEAR_SHADOW_SNAPSHOTS, (tenant,))
        conn.execute(statements.CLEAR_SHADOW_THREADS, (tenant,))
        conn.commit()
        report.swapped = True
        metrics.REBUILD_SWAPS.inc()
        # The chunks only the replaced snapshots named (a crash before this leaves them to `sweep-chunks`).
        for thread in sorted({r[0] for r in dropped}):
            report.chunks_swept += chunks.sweep_after(conn, tenant, thread)
        log.info("rebuild_swapped", tenant=tenant, threads=len(locked), changed=report.threads_changed,
                 snapshots_added=report.snapshots_added, snapshots_removed=report.snapshots_removed,
                 folded_under_lock=folded)
        return folded

    # -- one thread ----------------------------------------------------------------------------------

    def _open(self, conn: psycopg.Connection, tenant: str, thread: str, shadow_seq: int | None) -> _Thread:
        """The thread's fold where its shadow row left it (from its newest shadow snapshot), or from empty."""
        th = self._archived(conn, _Thread(tenant, thread, state=empty(tenant, thread)))
        if shadow_seq is None:
            return th
        row = conn.execute(statements.SHADOW_THREAD, (tenant, thread)).fetchone()
        if row is None:
            return th
        status, last_seq, last_hash, branches = row
        snap = conn.execute(statements.SHADOW_SNAPSHOT_AT_OR_BELOW, (tenant, thread, last_seq)).fetchone()
        shadow = durable.decode_snapshot_row(conn, tenant, thread, bytes(snap[1])) if snap else None
        base = _Thread(tenant, thread, state=shadow.state if shadow else empty(tenant, thread),
                       last_seq=int(snap[0]) if snap else 0, snap=shadow, archived=th.archived, manifest=th.manifest)
        # Refold from the snapshot to the shadow's head: its state, not its row, is needed for later snapshots.
        while base.last_seq < last_seq:
            n, _ = self._advance(conn, base, last_seq - base.last_seq, write=False)
            if n == 0:
                break
        base.pos = lifecycle.Position(status, tuple(branches))
        base.last_seq, base.last_hash = int(last_seq), bytes(last_hash) if last_hash is not None else None
        return base

    def _advance(self, conn: psycopg.Connection, th: _Thread, limit: int, *,
                 write: bool) -> tuple[int, bool]:
        """Fold up to ``limit`` chained events past ``th``'s head; with ``write``, store its shadow row and snapshots.

        Returns (events folded, whether the thread is caught up with what is stored).
        """
        rows, archived = self._rows(conn, th, limit)
        snaps, n = self.fold(th, rows)
        # Archived rows end at the archive's head, not at the thread's: PostgreSQL's rows come next.
        caught_up = n < len(rows) or not rows or (len(rows) < limit and not archived)
        if write:
            self._write(conn, th, snaps)
        return n, caught_up

    def _archived(self, conn: psycopg.Connection, th: _Thread) -> _Thread:
        """``th`` with its archive's head and manifest, if its history is (partly) in the S3 archive."""
        ref = durable.archive_ref(conn.execute(durable.ARCHIVE_SQL, (th.tenant, th.thread)).fetchone())
        if ref is not None and self.archive is not None:
            th.archived, th.manifest = ref.last_seq, self.archive.manifest(th.tenant, th.thread, ref)
        return th

    def _rows(self, conn: psycopg.Connection, th: _Thread, limit: int) -> tuple[list[tuple[Any, ...]], bool]:
        """Up to ``limit`` stored events past ``th``'s head as (seq, ts_ms, body, hash): from the archive's
        segments while below its head (then True), else from ``journal.events``."""
        if th.manifest is not None and th.last_seq < th.archived:
            assert self.archive is not None
            upto = min(th.archived, th.last_seq + limit)
            return [(r.seq, r.ts_ms, r.body, r.hash) for r in self.archive.rows(th.manifest, th.last_seq, upto)], True
        return conn.execute(statements.REBUILD_EVENTS, (th.tenant, th.thread, th.last_seq, limit)).fetchall(), False

    def fold(self, th: _Thread, rows: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int]:
        """Fold ``rows`` (seq, ts_ms, body, hash) while they extend the chained head: (snapshots due, events folded)."""
        snaps: list[tuple[Any, ...]] = []
        n = 0
        for seq, ts_ms, body, h in rows:
            if seq != th.last_seq + 1 or h is None:
                break  # a gap, or a seq stored ahead of one still in flight: the chain stops here
            ev = codec.decode_body(th.tenant, th.thread, seq, ts_ms, bytes(body))
            th.pos = lifecycle.step(th.pos, ev.type, ev.payload, ev.node)  # the payload as stored, as the projector
            if th.state is not None:
                th.state = self._apply(th, th.state, ev)
                if th.state is not None and (seq % self.every == 0 or seq == th.archived):
                    # Every snapshot is encoded, so the incremental chain is the projector's; an archived thread
                    # keeps only the one at the archive's head below it, as the archiver leaves it.
                    record, chunks, th.snap = encode_snapshot(th.state, th.snap)
                    th.chunks.extend(chunks)
                    if seq >= th.archived:
                        snaps.append((th.tenant, th.thread, seq, record, bytes(h)))
            th.last_seq, th.last_hash = seq, bytes(h)
            n += 1
        return snaps, n

    def _apply(self, th: _Thread, state: ThreadState, ev: Any) -> ThreadState | None:
        try:
            if ev.blob is not None:
                ev = self.resolve(ev)
            return apply(state, ev, self.registry)
        except ReducerError as e:
            log.error("rebuild_reducer_failed", tenant=th.tenant, thread=th.thread, seq=ev.seq, error=str(e))
            if self.conn is not None and not self.options.dry_run:
                self.conn.execute(statements.INSERT_DEAD_LETTER, (th.tenant, f"reducer:{th.thread}:{ev.seq}",
                                                                  th.thread, ev.seq, f"reducer failed: {e}", None))
        except JournalError as e:
            log.warning("rebuild_snapshots_stopped_blob_unavailable", tenant=th.tenant, thread=th.thread, seq=ev.seq,
                        error=str(e))
        return None

    def _row(self, conn: psycopg.Connection, th: _Thread) -> tuple[Any, ...]:
        """The thread's ``threads`` columns as the fold has them (status, last_seq, last_hash, max_seq, node,
        event_count, branches); events stored above a gap count in event_count and max_seq."""
        row = conn.execute(statements.REBUILD_ABOVE_HEAD, (th.tenant, th.thread, th.last_seq)).fetchone()
        above, top = row if row is not None else (0, None)
        return (th.pos.status, th.last_seq, th.last_hash, max(th.last_seq, int(top or 0)), th.pos.node,
                th.last_seq + int(above), list(th.pos.branches))

    def _write(self, conn: psycopg.Connection, th: _Thread, snaps: list[tuple[Any, ...]]) -> None:
        status, last_seq, last_hash, max_seq, node, count, branches = self._row(conn, th)
        conn.execute(statements.UPSERT_SHADOW_THREAD, (th.tenant, th.thread, status, last_seq, last_hash, max_seq,
                                                       node, count, orjson.dumps(branches).decode()))
        if th.chunks or snaps:
            chunks.share(conn, th.tenant, th.thread)
        if th.chunks:
            # Into the live chunk table: named by content, shared with live snapshots; the sweep reads the
            # shadow snapshots that name them as it reads the live ones.
            rows = [(th.tenant, th.thread, c.id, c.body) for c in th.chunks]
            conn.cursor().executemany(statements.INSERT_CHUNK, rows)
            th.chunks.clear()
        if snaps:
            conn.cursor().executemany(statements.INSERT_SHADOW_SNAPSHOT, snaps)

    # -- dry run -------------------------------------------------------------------------------------

    def _dry_tenant(self, conn: psycopg.Connection, report: TenantReport) -> Iterator[int]:
        """Fold each thread in memory and count what differs from the live rows; writes nothing."""
        after = ""
        pending = 0
        while True:
            page = conn.execute(statements.REBUILD_ALL_THREADS if self.archive
                                else statements.REBUILD_ALL_THREADS_NOT_ARCHIVED,
                                {"tenant": report.tenant, "after": after, "limit": PAGE}).fetchall()
            conn.rollback()
            if not page:
                break
            for thread, _ in page:
                after = thread
                th = self._archived(conn, _Thread(report.tenant, thread, state=empty(report.tenant, thread)))
                snaps: dict[int, tuple[bytes, bytes]] = {}
                while True:
                    rows, archived = self._rows(conn, th, self.chunk)
                    new, n = self.fold(th, rows)
                    snaps.update((s[2], (s[3], s[4])) for s in new)
                    pending += n
                    report.events += n
                    if n < len(rows) or not rows or (len(rows) < self.chunk and not archived):
                        break
                    if pending >= self.chunk:
                        yield pending
                        pending = 0
                self._compare(conn, th, snaps, report)
                conn.rollback()
                if pending >= self.chunk:
                    yield pending
                    pending = 0
        if pending:
            yield pending

    def _compare(self, conn: psycopg.Connection, th: _Thread, snaps: dict[int, tuple[bytes, bytes]],
                 report: TenantReport) -> None:
        report.threads += 1
        live = conn.execute(statements.LIVE_THREAD, (th.tenant, th.thread)).fetchone()
        if live is not None:
            want = self._row(conn, th)
            have = (live[0], live[1], bytes(live[2]) if live[2] is not None else None, *live[3:6], list(live[6]))
            if have != want:
                report.threads_changed += 1
                log.info("rebuild_would_change_thread", tenant=th.tenant, thread=th.thread, live=_show(have),
                         rebuilt=_show(want))
        stored = {int(s): (bytes(st), bytes(h)) for s, st, h in
                  conn.execute(statements.LIVE_SNAPSHOTS, (th.tenant, th.thread))}
        th.chunks.clear()  # a dry run writes none
        report.snapshots_removed += sum(1 for s, v in stored.items() if snaps.get(s) != v)
        report.snapshots_added += sum(1 for s, v in snaps.items() if stored.get(s) != v)


def _show(row: tuple[Any, ...]) -> list[Any]:
    return [v.hex()[:16] if isinstance(v, bytes) else v for v in row]


def rebuild(settings: Settings, options: RebuildOptions | None = None, *,
            on_progress: Callable[[Progress], None] | None = None) -> list[TenantReport]:
    """Rebuild the derived tables of ``options.tenants`` (every tenant if none); see the module docstring."""
    return Rebuilder(settings, options, on_progress=on_progress).run()
