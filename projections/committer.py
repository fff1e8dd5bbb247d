"""The projector's committer: entries → one PostgreSQL transaction per batch → acknowledgement.

Entries are checked and decoded (``projections.intake``), written and committed by
``store.write_batch``, and only then acknowledged: one ``acknowledge.lua`` call per tenant (XACK,
committed mark, per-thread ``projected`` markers), sent at once and read after the next batch
(``DeferredAcks``). A batch PostgreSQL rejects as a whole is retried entry by entry; an entry
still refused after ``max_attempts`` goes to ``dead_letters``. A reused seq (a conflict) fences
its thread in Redis too, and a stale committed mark or a conflict asks maintenance to raise the
tenant's Lua heads (Redis lost its tail).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
import redis

from journal import keys
from journal.errors import JournalError
from journal.reducer import Registry
from projections import metrics
from projections.acks import Call, DeferredAcks
from projections.intake import Intake, storable_text
from projections.links import Links
from projections.maintenance import Maintenance
from projections.snapshots import BlobSource
from projections.snapshotter import SnapshotWriter
from projections.store import BatchResult, Item, KnownHeads, Poison, write_batch

Entry = tuple[str, str, dict[bytes, Any]]
Decoded = tuple[list[Item], list[Poison]]


class AheadReads(Protocol):
    """Replies of a read sent ahead, parsed a little at a time while the committer waits on PostgreSQL."""

    def parse_ahead(self) -> None: ...


class _BatchOverlap:
    """What the committer does while one batch waits on PostgreSQL (``store.Overlap``).

    While the thread rows are being locked: acknowledge the batch before. While the writes and the
    COMMIT run: decode the next batch, and parse one reply of a read sent ahead if it has arrived.
    """

    __slots__ = ("_ahead", "_committer", "_next")

    def __init__(self, committer: Committer, next_batch: list[Entry] | None, ahead: AheadReads | None) -> None:
        self._committer = committer
        self._next = next_batch
        self._ahead = ahead

    def while_locking(self) -> None:
        self._committer.ack_committed()

    def while_writing(self) -> None:
        self._committer.decode_next(self._next)
        if self._ahead is not None:
            self._ahead.parse_ahead()


class Committer:
    def __init__(self, links: Links, maintenance: Maintenance, intake: Intake, *, group: str, key: bytes | None,
                 snapshot_every: int, resolve: BlobSource, max_attempts: int, log: Any,
                 registry: Registry | None = None, snapshots: SnapshotWriter | None = None) -> None:
        self.links = links
        self.maintenance = maintenance
        self.intake = intake
        self.group = group
        self.key = key
        self.snapshot_every = snapshot_every
        self.resolve = resolve
        self.max_attempts = max_attempts
        self.registry = registry
        #: Writes the snapshots a batch made due once it is acknowledged (else they are folded inside the batch).
        self.snapshots = snapshots
        self.log = log
        self._acks: DeferredAcks | None = None
        self._attempts: dict[tuple[str, str], int] = defaultdict(int)
        #: Heads of the threads this worker committed last: their small batches take one round trip.
        self.heads = KnownHeads()
        #: A committed batch whose acknowledgement waits for the next batch's row locks (``project_batches``).
        self._committed: tuple[BatchResult, list[tuple[str, str]]] | None = None
        #: The next batch, decoded while PostgreSQL ran the one before (``decode_next``).
        self._decoded_next: tuple[object, Decoded] | None = None
        #: tenant -> committed stream ms (None: read it from PostgreSQL) whose Lua heads need repairing.
        self._due_repairs: dict[str, int | None] = {}
        #: An entry failed below ``max_attempts``: still pending on this consumer, to be re-read next turn.
        self.retry_own = False

    @property
    def acks(self) -> DeferredAcks:
        if self._acks is None:
            self._acks = DeferredAcks(self.links.settings.redis_url or "", self.links.script("acknowledge"),
                                      self.links.redis)
        return self._acks

    def reset(self) -> None:
        """Forget acknowledgements in flight (after a connection error: their entries stay pending)."""
        if self._acks is not None:
            self._acks.reset()

    def close(self) -> None:
        """Read the last batch's acknowledgements (not left unread when stopping), then drop the connection."""
        if self._acks is not None:
            with contextlib.suppress(redis.RedisError, psycopg.Error, JournalError):
                self.flush_acks()
            self._acks.reset()

    # -- batches -------------------------------------------------------------------------------------

    def decode(self, entries: list[Entry]) -> Decoded:
        return self.intake.decode(entries)

    def decode_next(self, entries: list[Entry] | None) -> None:
        """Decode ``entries`` now (in a wait on PostgreSQL), for ``project_batches`` to take next."""
        if entries is not None and (self._decoded_next is None or self._decoded_next[0] is not entries):
            self._decoded_next = (entries, self.decode(entries))

    def _take_decoded(self, entries: list[Entry]) -> Decoded:
        done, self._decoded_next = self._decoded_next, None
        return done[1] if done is not None and done[0] is entries else self.decode(entries)

    def project(self, entries: list[Entry]) -> int:
        """Decode, write in one transaction, then acknowledge. Returns entries handled."""
        return self._write(*self.decode(entries))

    def project_batches(self, batches: list[list[Entry]], ahead: AheadReads | None = None) -> int:
        """Project ``batches`` in order, overlapping the worker's own work with PostgreSQL's (``_BatchOverlap``)."""
        done = 0
        decoded = self.decode(batches[0])
        try:
            for i in range(len(batches)):
                nxt = batches[i + 1] if i + 1 < len(batches) else None
                done += self._write(*decoded, overlap=_BatchOverlap(self, nxt, ahead), defer_ack=True)
                if nxt is not None:
                    # Decoded by the overlap while PostgreSQL ran this batch, or here if a statement failed first.
                    decoded = self._take_decoded(nxt)
        finally:
            self._decoded_next = None
            self.ack_committed()  # the last batch's, or one committed before a later batch failed
        self._repair()
        return done

    def _write(self, items: list[Item], poison: list[Poison], *, overlap: _BatchOverlap | None = None,
               defer_ack: bool = False) -> int:
        """Write one batch and commit; acknowledge it now, or with ``defer_ack`` at ``ack_committed``."""
        t0 = time.perf_counter()
        try:
            result = write_batch(self.links.pg, items, poison, key=self.key, snapshot_every=self.snapshot_every,
                                 resolve=self.resolve, overlap=overlap, registry=self.registry,
                                 defer_snapshots=self.snapshots is not None, heads=self.heads)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            self.log.warning("batch_rejected_retrying_one_by_one", error=str(e), entries=len(items) + len(poison))
            self.ack_committed()
            return self._project_singly(items, poison)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - t0)
        self.ack_committed()  # if the overlap's ``while_locking`` did not run
        committed = (result, [(i.event.tenant, i.stream_id) for i in items] + [(p.tenant, p.stream_id) for p in poison])
        if defer_ack:
            self._committed = committed
        else:
            self.after_commit(*committed)
        return len(items) + len(poison)

    def _project_singly(self, items: list[Item], poison: list[Poison]) -> int:
        done: list[tuple[str, str]] = []
        total = BatchResult()
        for it in items:
            slot = (it.event.tenant, it.stream_id)
            try:
                r = write_batch(self.links.pg, [it], key=self.key, snapshot_every=self.snapshot_every,
                                resolve=self.resolve, registry=self.registry)
                total.heads.update(r.heads)
                total.conflicts += r.conflicts
                total.inserted += r.inserted
                done.append(slot)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                self._attempts[slot] += 1
                if self._attempts[slot] >= self.max_attempts:
                    reason = storable_text(f"PostgreSQL refused it {self._attempts[slot]} times: {e}")
                    poison.append(Poison(it.event.tenant, it.stream_id, reason, it.body, it.event.thread,
                                         it.event.seq))
                    self._attempts.pop(slot, None)
                else:
                    self.log.warning("entry_failed", tenant=it.event.tenant, thread=it.event.thread,
                                     seq=it.event.seq, attempt=self._attempts[slot], error=str(e))
                    self.retry_own = True  # still pending on this consumer: retried next turn, not after claim_idle_ms
        if poison:
            total.dead_letters = self._write_dead_letters(poison)
            done += [(p.tenant, p.stream_id) for p in poison]
        self.after_commit(total, done)
        return len(done)

    def _write_dead_letters(self, poison: list[Poison]) -> int:
        """Store ``poison``; if PostgreSQL refuses a row as is, store it with only the columns that always fit."""
        try:
            return write_batch(self.links.pg, [], poison).dead_letters
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            self.log.error("dead_letter_refused_storing_bare", error=str(e)[:500], entries=len(poison))
            bare = [Poison(p.tenant, p.stream_id, storable_text(f"{p.reason} (stored bare: {e})"), p.entry)
                    for p in poison]
            return write_batch(self.links.pg, [], bare).dead_letters

    # -- acknowledgements ----------------------------------------------------------------------------

    def ack_committed(self) -> None:
        """Acknowledge the batch ``_write`` committed with ``defer_ack``, if not done yet."""
        if self._committed is not None:
            committed, self._committed = self._committed, None
            self.after_commit(*committed)

    def after_commit(self, result: BatchResult, acked: list[tuple[str, str]]) -> None:
        """Acknowledge a committed batch: sent now, replies read after the next batch (``DeferredAcks``)."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for tenant, sid in acked:
            by_tenant[tenant].append(sid)
        heads: dict[str, list[Any]] = defaultdict(list)
        for (tenant, thread), seq in result.heads.items():
            heads[tenant] += [thread, seq]
        calls = []
        for tenant in sorted(by_tenant.keys() | heads.keys() | result.positions.keys()):
            sids = by_tenant.get(tenant, [])
            position = result.positions.get(tenant)
            mark = ("", 0) if position is None else (result.previous_ms.get(tenant, 0), position[0])
            calls.append(Call(tenant, [keys.projected(tenant), keys.stream(tenant), keys.projected_feed(tenant)],
                              [self.group, keys.COMMITTED_MARK, *mark, len(sids), *sids, *heads.get(tenant, ())],
                              None if position is None else position[0]))
        stale = self.acks.send(calls)
        if result.conflicts:
            self._fence(result.conflicts)
        # A reused seq proves Redis lost its tail: stop further reuse (as soon as no transaction is open).
        for tenant, *_ in result.conflicts:
            self._due_repairs.setdefault(tenant, result.positions[tenant][0] if tenant in result.positions else None)
        for call in stale:
            self._due_repairs.setdefault(call.tenant, call.committed_ms)
        if self.links.pg_idle():  # not inside the next batch
            self._repair()
        if result.snapshot_jobs and self.snapshots is not None:
            # After the acknowledgement is on its way: waiters need the events, not the snapshot.
            self.snapshots.submit(result.snapshot_jobs)
        metrics.PROJECTED.inc(result.inserted)
        metrics.DUPLICATES.inc(result.duplicates)
        metrics.CONFLICTS.inc(len(result.conflicts))
        metrics.DEAD_LETTERS.inc(result.dead_letters)

    def _fence(self, conflicts: list[tuple[str, str, int]]) -> None:
        pipe = self.links.redis.pipeline(transaction=False)
        for tenant, thread, seq in conflicts:
            pipe.hset(keys.fences(tenant), thread, f"seq {seq} was issued twice with different content")
            self.log.error("sequence_conflict_thread_fenced", tenant=tenant, thread=thread, seq=seq)
        for (tenant, thread, _), res in zip(conflicts, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(res, redis.ResponseError):  # the tenant's user made its fences key another type
                self.log.error("fence_refused", tenant=tenant, thread=thread, error=str(res)[:500])

    def flush_acks(self) -> None:
        """Wait for the acknowledgements in flight (end of a turn, before re-reading pending entries, at close)."""
        for call in self.acks.flush():
            self._due_repairs.setdefault(call.tenant, call.committed_ms)
        self._repair()

    def _repair(self) -> None:
        """A stale committed mark, like a reused seq, proves Redis lost its tail: raise the heads now."""
        repair: Callable[[str, int | None], int] = self.maintenance.repair_heads
        for tenant in sorted(self._due_repairs):
            repair(tenant, self._due_repairs[tenant])
            del self._due_repairs[tenant]  # only once done: a failed repair is retried at the next call
