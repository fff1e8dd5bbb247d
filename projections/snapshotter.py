"""The projector's snapshot writer: snapshots of committed batches, off the batch path.

A batch commits its events and raises the ``projected`` markers without folding snapshots
(``store.write_batch(defer_snapshots=True)``); the snapshots it made due are handed here and written
on a thread of their own, on a PostgreSQL connection of their own. Folding a long conversation's
state took 30 ms where the rest of a 3-event batch took 2 ms: inline, it stalled every
``durability='projected'`` append behind it, and every other tenant's batch too.

Jobs are merged per thread while they wait (a backlog makes one fold per thread, not one per batch),
bounded (``max_pending`` threads: past that, ``submit`` waits, as the inline fold did). A snapshot is
derived data: a job lost with the process leaves its seqs to a replay from the snapshot before, and a
job PostgreSQL refuses is logged and dropped, never retried forever. A lost connection is retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import psycopg

from journal import logs
from journal.reducer import Registry
from journal.settings import Settings
from projections import db
from projections.snapshots import BlobSource
from projections.store import SnapshotJob, write_snapshots

log = logs.get_logger("projections.snapshotter")

#: Chained events kept in a merged job; past that, the fold reads them back from PostgreSQL.
KEEP_CHAINED = 2000


def merge(old: SnapshotJob, new: SnapshotJob) -> SnapshotJob:
    """Two jobs of one thread as one: the range from the first's head to the second's."""
    tenant, thread, old_lo, old_hi, old_chained = old
    _, _, new_lo, new_hi, new_chained = new
    if new_lo == old_hi and len(old_chained) + len(new_chained) <= KEEP_CHAINED:
        return tenant, thread, old_lo, new_hi, old_chained + new_chained
    # Not contiguous (another worker's batch in between) or long: ``write_due`` reads the events itself.
    return tenant, thread, min(old_lo, new_lo), max(old_hi, new_hi), []


class SnapshotWriter:
    def __init__(self, settings: Settings, *, every: int, resolve: BlobSource | None, registry: Registry | None,
                 max_pending: int = 10_000, per_transaction: int = 50) -> None:
        self.settings = settings
        self.every = every
        self.resolve = resolve
        self.registry = registry
        self.max_pending = max_pending
        self.per_transaction = per_transaction
        self._jobs: dict[tuple[str, str], SnapshotJob] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        #: Snapshots written, and jobs dropped after PostgreSQL refused them (for tests and metrics).
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._jobs) + self._busy

    def submit(self, jobs: Iterable[SnapshotJob]) -> None:
        """Queue ``jobs`` (of committed batches); waits while ``max_pending`` threads are queued."""
        jobs = list(jobs)
        if not jobs:
            return
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._closing = False
                self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
                self._thread.start()
            for job in jobs:
                k = (job[0], job[1])
                self._jobs[k] = merge(self._jobs[k], job) if k in self._jobs else job
            self._cond.notify_all()
            while len(self._jobs) > self.max_pending and self._thread.is_alive():
                self._cond.wait(1.0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every job submitted is written (or dropped); False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return not (self._jobs or self._busy)
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``: a stopping worker does not wait for derived data; a
        snapshot left unwritten leaves its seqs to a replay from the one before), then stop the thread."""
        if not self.wait_idle(timeout):
            log.warning("snapshots_left_unwritten", threads=self.pending)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(5)
        self._thread = None

    def _take(self) -> list[SnapshotJob] | None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
            while not self._jobs and not self._closing:
                self._cond.wait()
            if self._closing:  # what is left after close()'s wait is given up
                return None
            taken = []
            for k in list(self._jobs)[: self.per_transaction]:
                taken.append(self._jobs.pop(k))
            self._busy = True
            self._cond.notify_all()  # room under max_pending
            return taken

    def _run(self) -> None:
        backoff = 0.2
        try:
            while (jobs := self._take()) is not None:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = db.connect(self.settings)
                    self.written += write_snapshots(self._conn, jobs, snapshot_every=self.every,
                                                    resolve=self.resolve, registry=self.registry)
                    backoff = 0.2
                except psycopg.OperationalError as e:
                    log.warning("snapshot_writer_reconnecting", error=str(e)[:500], sleep=backoff)
                    self._drop_connection()
                    self._requeue(jobs)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except Exception as e:  # derived data: one refused job must not stop the others
                    log.warning("snapshot_transaction_refused_retrying_singly", error=str(e)[:500])
                    self._singly(jobs)
        finally:
            self._drop_connection()
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _singly(self, jobs: list[SnapshotJob]) -> None:
        for i, job in enumerate(jobs):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = db.connect(self.settings)
                self.written += write_snapshots(self._conn, [job], snapshot_every=self.every,
                                                resolve=self.resolve, registry=self.registry)
            except psycopg.OperationalError:
                self._drop_connection()
                self._requeue(jobs[i:])
                return
            except Exception as e:
                self.dropped += 1
                log.error("snapshot_dropped", tenant=job[0], thread=job[1], seq=job[3], error=str(e)[:500])

    def _requeue(self, jobs: list[SnapshotJob]) -> None:
        with self._cond:
            for job in jobs:
                k = (job[0], job[1])
                self._jobs[k] = merge(job, self._jobs[k]) if k in self._jobs else job

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error as e:
                log.debug("snapshot_connection_close_failed", error=str(e))

