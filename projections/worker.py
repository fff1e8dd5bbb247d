"""The projector: tenant streams → PostgreSQL, through the consumer group ``projector``.

One loop per process, in one thread, over rooms that each own one role:

- ``discovery``: which tenant streams to read (registry, background SCAN, PostgreSQL);
- ``reader``: new entries (XREADGROUP), this consumer's own pending ones, dead consumers' (XAUTOCLAIM,
  turn after turn while more are pending), and for streams with a backlog the next read sent ahead
  (``projections.deferred``); a stream's share of a round is at most a batch, and the round's quietest
  streams go first, so one tenant's burst does not hold the others' entries back;
- ``committer``: intake checks, one transaction per batch (``store.write_batch``), then XACK and the
  per-thread ``projected`` marker (sent at once, replies read after the next batch);
- ``snapshotter``: the snapshots a batch made due, folded on a thread of their own once the batch is
  acknowledged (not inside the batch, where a long conversation's fold stalled every waiter);
- ``maintenance``: every few seconds, trims streams below what is durably projected (XTRIM MINID,
  keeping a hot window) and checks whether Redis lost its tail (a stream behind the position
  PostgreSQL recorded): then it raises the Lua heads to what PostgreSQL holds, so no seq is ever
  issued twice.

A batch that PostgreSQL rejects as a whole is retried entry by entry; an entry that still
fails after ``max_attempts`` goes to ``dead_letters`` and the loop keeps going. While
PostgreSQL is down the loop backs off and retries the same batch; appends keep flowing
into Redis and nothing is acknowledged that is not committed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg
import redis
import sqlalchemy as sa

from journal import keys, logs
from journal.append import resolve_blob
from journal.blobs import BlobStore, s3_client
from journal.chain import key_bytes
from journal.errors import BlobError, JournalError, StoreUnavailable
from journal.events import Event
from journal.reducer import load_registry
from journal.settings import Settings
from projections import metrics, tables
from projections.committer import Committer
from projections.discovery import Discovery
from projections.intake import BODY_HEADROOM, Intake
from projections.links import Links
from projections.maintenance import Maintenance
from projections.reader import Entry, Reader, install_parser
from projections.snapshotter import SnapshotWriter

#: Every tenant that has committed a stream position (known to PostgreSQL before any SCAN).
OFFSET_TENANTS_SQL = tables.compiled(sa.select(tables.offsets.c.tenant_id))

log = logs.get_logger("projections.worker")
GROUP = "projector"


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    #: Entries per PostgreSQL transaction.
    batch_size: int = 5000
    #: Streams per XREADGROUP call (one call can name many tenant streams; calls are pipelined).
    streams_per_read: int = 500
    #: Entries read per round over all streams (each stream gets at least 10).
    read_ahead: int = 100_000
    block_ms: int = 50
    #: A pending entry idle this long belongs to a dead worker and is claimed.
    claim_idle_ms: int = 30_000
    maintenance_every: float = 5.0
    tenant_refresh_every: float = 1.0
    #: A SCAN pass for tenant streams starts this often (for tenants whose users cannot write the registry).
    tenant_scan_every: float = 3.0
    max_attempts: int = 3
    #: Offsets committed more recently than this are not compared yet (their mark may be in flight).
    tail_check_grace_ms: int = 1000


class SnapshotBlobs:
    """Offloaded payloads for snapshot folds, with a breaker: after a failed read, snapshots that
    need blobs are deferred for ``pause`` seconds instead of being re-folded at every batch."""

    def __init__(self, store: BlobStore | None, pause: float = 10.0) -> None:
        self.store = store
        self.pause = pause
        self._down_until = 0.0

    def available(self) -> bool:
        return self.store is not None and time.monotonic() >= self._down_until

    def __call__(self, event: Event) -> Event:
        if event.blob is None:
            return event
        if self.store is None:
            raise BlobError("no object storage configured (JOURNAL_S3_URL) to read offloaded payloads")
        if not self.available():
            raise BlobError("object storage failed moments ago; snapshot deferred")
        try:
            return resolve_blob(event, self.store.get(event.tenant, event.blob))
        except JournalError:
            self._down_until = time.monotonic() + self.pause
            raise


def tune_gc() -> None:
    """Garbage-collector (and GIL switch) settings for a process whose main work is a projector (the CLI,
    the benchmark).

    A read round holds ~100,000 entries, each a few containers that live until their batch commits.
    With the default thresholds they are promoted to the oldest generation and then scanned again
    by full collections: 35 % of the worker's CPU in a 200,000-event drain (py-spy), for no cycle
    found, as the projector builds none. Objects alive now (modules, settings) are frozen out of
    every collection, and young collections run every 100,000 allocations instead of 700.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    # The snapshot writer's thread folds in Python; at the default 5 ms switch interval the batch loop can
    # wait that long for the GIL after each of a batch's round trips while a fold runs (measured once with
    # the instrumented worker: p99 of a 3-event ``projected`` append 10.3-11.1 ms before, 8.5-10.3 after).
    sys.setswitchinterval(0.0005)


class Projector:
    """A projector worker. ``run()`` loops until ``stop()`` or SIGTERM; ``run_once()`` does one turn.

    It holds the turn's schedule and the lifecycle; the work is done by its rooms (module docstring).
    """

    def __init__(self, settings: Settings, options: WorkerOptions | None = None, *,
                 consumer: str | None = None) -> None:
        self.settings = settings
        self.options = o = options or WorkerOptions()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = log.bind(consumer=self.consumer)
        self._stop = threading.Event()
        self.links = Links(settings, prepare_redis=install_parser)
        self.discovery = Discovery(lambda: self.links.redis, GROUP, refresh_every=o.tenant_refresh_every,
                                   scan_every=o.tenant_scan_every)
        self.reader = Reader(self.links, self.discovery, group=GROUP, consumer=self.consumer,
                             streams_per_read=o.streams_per_read, read_ahead=o.read_ahead, batch_size=o.batch_size,
                             block_ms=o.block_ms, claim_idle_ms=o.claim_idle_ms, stop=self._stop)
        self.maintenance = Maintenance(self.links, self.discovery, group=GROUP, hot_window=settings.hot_window,
                                       tail_check_grace_ms=o.tail_check_grace_ms, log=self.log)
        # Blobs are read only to fold snapshots, which can be skipped: fail fast rather than stall a batch.
        self.resolve = SnapshotBlobs(BlobStore(s3_client(settings, read_timeout=5, attempts=1), settings.s3_bucket)
                                     if settings.s3_url else None)
        registry = load_registry(settings.reducers)
        self.snapshots = SnapshotWriter(settings, every=settings.snapshot_every, resolve=self.resolve,
                                        registry=registry)
        self.committer = Committer(
            self.links, self.maintenance,
            Intake(settings.max_payload_bytes + BODY_HEADROOM, settings.max_payload_bytes + BODY_HEADROOM),
            group=GROUP, key=key_bytes(settings.hash_key), snapshot_every=settings.snapshot_every,
            resolve=self.resolve, max_attempts=o.max_attempts, log=self.log,
            # The custom reducers snapshots fold with: the settings', as every replayer loads them.
            registry=registry, snapshots=self.snapshots)
        self._last_maintenance = -float("inf")  # the first turn does maintenance (and claims)
        self._last_claim = -float("inf")
        #: Re-read this consumer's own pending entries (at start, and after a failed batch).
        self._recover = True

    @property
    def redis(self) -> redis.Redis:
        return self.links.redis

    @property
    def pg(self) -> psycopg.Connection:
        return self.links.pg

    # -- lifecycle -----------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def close(self) -> None:
        self.committer.close()
        self.snapshots.close()
        self.reader.reset()
        self.links.close()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.log.info("projector_stopping", signal=signum)
        self.stop()

    def run(self) -> None:
        """Project until stopped; the batch in hand is finished and acknowledged first."""
        self.log.info("projector_started")
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self.run_once()
                backoff = 0.2
            except (StoreUnavailable, psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError) as e:
                self.log.warning("projector_backoff", error=str(e), sleep=backoff)
                self._recover = True  # the batch in hand is still pending on this consumer: retry it
                self._reset_connections()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        if self.reader.unread:
            # A round read ahead is delivered to this consumer already: project it rather than leave
            # it pending until another worker claims it.
            with contextlib.suppress(StoreUnavailable, psycopg.OperationalError, redis.RedisError):
                self.read_and_project()
                self.committer.flush_acks()
        self.close()
        self.log.info("projector_stopped")

    def _reset_connections(self) -> None:
        # Entries of a read sent ahead stay pending on this consumer: recover_own takes them next turn.
        self.reader.reset()
        self.committer.reset()
        self.links.reset_pg()
        self.discovery.grouped.clear()

    # -- one turn ------------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Refresh tenants, read and project one round of entries, and do due maintenance."""
        now = time.monotonic()
        if self.discovery.due(now):
            self.refresh_tenants(force=False)
        done = 0
        if now - self._last_maintenance >= self.options.maintenance_every:
            self._last_maintenance = now
            self.check_tail()
            # An entry is claimable only after claim_idle_ms: looking more often than every half of that
            # (one XAUTOCLAIM per tenant stream) finds nothing sooner that matters.
            if now - self._last_claim >= self.options.claim_idle_ms / 2000:
                self._last_claim = now
                done += self.claim()
            self.trim()
            if self.settings.metrics_port:
                self.maintenance.observe_lag()
        elif self.reader.claim_more:
            # A dead worker left more pending than one claim takes (its read-ahead round): go on at once.
            # A page per maintenance turn drained a killed worker's round at ~870 events/s.
            done += self.claim()
        if self._recover or self.committer.retry_own:
            self._recover = self.committer.retry_own = False  # before: a failure while recovering asks again
            self.committer.flush_acks()  # entries whose acknowledgement is in flight are not pending work
            done += self.recover_own()
        done += self.read_and_project()
        self.committer.flush_acks()
        return done

    def refresh_tenants(self, *, force: bool = True) -> None:
        """New tenants from the registry (read now, or when due), a background SCAN and, first, PostgreSQL."""
        self.discovery.refresh(trusted=self._pg_tenants, force=force)

    def _pg_tenants(self) -> set[str]:
        with self.pg.transaction():
            return {r[0] for r in self.pg.execute(OFFSET_TENANTS_SQL)}

    def read_and_project(self) -> int:
        """Read new entries of every known stream (or a round read ahead), then project them.

        A stream that filled its share of the round has a backlog: its next read is then sent
        before this round is written, so Valkey prepares it while PostgreSQL works.
        """
        entries = self.reader.read_round()
        if not entries:
            return 0
        size = self.options.batch_size
        # The quiet streams' entries (first in the round) commit in batches of their own: in a batch with
        # another tenant's burst they waited for its 5,000 rows (other tenants' lag p50 ~0.5 s in a burst).
        cut = self.reader.quiet if 0 < self.reader.quiet < len(entries) else 0
        batches = [part[i : i + size] for part in (entries[:cut], entries[cut:]) for i in range(0, len(part), size)]
        if self.reader.backlog:
            self.reader.send_ahead()
        return self.committer.project_batches(batches, ahead=self.reader)

    def recover_own(self) -> int:
        """Project entries delivered to this consumer but never acknowledged (a failed batch)."""
        total = 0
        for chunk in self.reader.own_chunks():
            for _ in range(100):  # bounded: an entry failing below max_attempts stays pending
                entries = self.reader.own_pending(chunk)
                if entries is None:
                    self._recover = True  # the chunk's other tenants: next turn
                    break
                if not entries:
                    break
                done = self.project(entries)
                total += done
                if not done:
                    break
        return total

    def claim(self) -> int:
        """Take over entries pending on dead consumers for longer than ``claim_idle_ms``."""
        entries = self.reader.claimable()
        if not entries:
            return 0
        self.log.info("claimed_pending", entries=len(entries))
        metrics.CLAIMED.inc(len(entries))
        size = self.options.batch_size
        return self.committer.project_batches([entries[i : i + size] for i in range(0, len(entries), size)])

    def project(self, entries: list[Entry]) -> int:
        """Decode, write in one transaction, then acknowledge. Returns entries handled."""
        return self.committer.project(entries)

    def trim(self) -> None:
        self.maintenance.trim()

    def check_tail(self) -> None:
        self.maintenance.check_tail()

    def repair_heads(self, tenant: str, committed_ms: int | None = None) -> int:
        return self.maintenance.repair_heads(tenant, committed_ms)

    def drain(self, timeout: float = 30.0, tenants: Iterable[str] | None = None, *, snapshots: bool = True) -> None:
        """Project until ``tenants`` (default: all known) have nothing new or pending (tests, the demo), and
        (``snapshots``) until the snapshots it made due are written."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh_tenants()
            self.run_once()
            left = self.backlog(tenants)
            if left == 0 and (not snapshots or self.snapshots.wait_idle(max(0.0, deadline - time.monotonic()))):
                return
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"projector did not drain within {timeout}s ({left} entries left)")

    def backlog(self, tenants: Iterable[str] | None = None) -> int:
        """Entries not yet acknowledged (undelivered lag + pending) over ``tenants`` (default: all known)."""
        total = 0
        for t in self.discovery.tenants if tenants is None else tenants:
            try:
                for g in self.redis.xinfo_groups(keys.stream(t)):
                    if _text(g["name"]) == GROUP:
                        total += int(g.get("lag") or 0) + int(g.get("pending") or 0)
            except redis.ResponseError:
                continue
        return total


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
