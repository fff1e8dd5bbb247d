"""Snapshot chunks no snapshot references any more, found and deleted, one thread per transaction.

Chunks are shared by a thread's snapshots and never change, so deleting snapshots (the archiver
keeps only the head one, a rebuild swap replaces those that differ) leaves no chunk unreferenced
as long as the thread's lists only grew. When they did not (a rebuild with other reducers, a fold
restarted past an unreadable snapshot), the chunks only the deleted snapshots named stay behind:
the sweep finds them by reading every record that may name a chunk (the live snapshots and a
rebuild's shadow ones) and the index chunks they name, and deletes the rest.

The sweep must not run between a writer's INSERT of a chunk that already exists (which changes
nothing) and the commit of the snapshot that names it. Writers hold the thread's advisory lock
shared (:func:`share`), the sweep exclusively, and only if it is free: a busy thread is left
for the next sweep, so a sweep never waits and never deadlocks with writers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg

from journal import durable, logs
from journal.errors import CodecError
from journal.state import referenced_chunks
from projections import statements

log = logs.get_logger("projections.chunks")

#: Threads listed per query by :func:`sweep_all`.
PAGE = 500


def share(conn: psycopg.Connection, tenant: str, thread: str) -> None:
    """Hold the thread's chunk lock shared until ``conn``'s transaction ends: call before writing its chunks."""
    conn.execute(statements.SHARE_CHUNKS, (tenant, thread))


def sweep(conn: psycopg.Connection, tenant: str, thread: str) -> int | None:
    """Delete the thread's chunks that no snapshot needs, in a transaction of its own; how many, or None if
    it was not swept (a writer holds the thread, or a snapshot of it cannot be read: its chunks all stay)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError("sweep commits its own transaction: call it outside one")
    with conn.transaction():
        if not conn.execute(statements.TRY_SWEEP_CHUNKS, (tenant, thread)).fetchone()[0]:  # type: ignore[index]
            return None
        load = durable.chunk_loader(conn, tenant, thread)
        keep: set[bytes] = set()
        try:
            for (record,) in conn.execute(statements.THREAD_SNAPSHOT_RECORDS, {"tenant": tenant, "thread": thread}):
                keep |= referenced_chunks(record, load)
        except CodecError as e:
            log.warning("chunk_sweep_skipped_unreadable_snapshot", tenant=tenant, thread=thread, error=str(e))
            return None
        deleted = conn.execute(statements.DELETE_CHUNKS_BUT, (tenant, thread, sorted(keep))).rowcount
    if deleted:
        log.info("snapshot_chunks_swept", tenant=tenant, thread=thread, deleted=deleted, kept=len(keep))
    return deleted


def sweep_after(conn: psycopg.Connection, tenant: str, thread: str) -> int:
    """:func:`sweep` after a change that may have left chunks unnamed (an archive's switch, a rebuild's
    swap), which has committed: a sweep that fails is logged and leaves its chunks to the next one."""
    try:
        return sweep(conn, tenant, thread) or 0
    except psycopg.Error as e:
        if not conn.closed:
            conn.rollback()
        log.warning("chunk_sweep_failed_left_for_the_next", tenant=tenant, thread=thread, error=str(e)[:500])
        return 0


@dataclass
class SweepReport:
    threads: int = 0
    chunks_deleted: int = 0
    #: threads left as they were: a writer held them, or a snapshot of theirs is unreadable
    skipped: list[tuple[str, str]] = field(default_factory=list)


def threads_with_chunks(conn: psycopg.Connection, tenant: str | None = None) -> Iterator[tuple[str, str]]:
    """Every (tenant, thread) that has chunks, in key order, a page per query (autocommit reads)."""
    after = ("", "")
    while True:
        rows = conn.execute(statements.THREADS_WITH_CHUNKS, (*after, tenant, tenant, PAGE)).fetchall()
        conn.commit()
        yield from ((str(a), str(b)) for a, b in rows)
        if len(rows) < PAGE:
            return
        after = rows[-1]


def sweep_all(conn: psycopg.Connection, tenant: str | None = None,
              progress: Callable[[int], None] | None = None) -> SweepReport:
    """:func:`sweep` every thread that has chunks (of ``tenant``, or of every tenant)."""
    report = SweepReport()
    for key in threads_with_chunks(conn, tenant):
        deleted = sweep(conn, *key)
        report.threads += 1
        if deleted is None:
            report.skipped.append(key)
        else:
            report.chunks_deleted += deleted
        if progress is not None:
            progress(1)
    return report
