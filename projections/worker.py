"""The projector: tenant streams → PostgreSQL, through the consumer group ``projector``.

One loop per process. Each turn it reads new entries of every known tenant stream
(XREADGROUP), writes them in one transaction (``store.write_batch``), and only then XACKs
them and raises the per-thread ``projected`` marker (sent at once, replies read after the next
batch; on a backlog the next read is sent ahead too: ``projections.deferred``). Every few seconds it also claims
entries left pending by dead workers (XAUTOCLAIM), trims streams below what is durably
projected (XTRIM MINID, keeping a hot window), and checks whether Redis lost its tail (a
stream behind the position PostgreSQL recorded): then it raises the Lua heads to what
PostgreSQL holds, so no seq is ever issued twice.

A batch that PostgreSQL rejects as a whole is retried entry by entry; an entry that still
fails after ``max_attempts`` goes to ``dead_letters`` and the loop keeps going. While
PostgreSQL is down the loop backs off and retries the same batch; appends keep flowing
into Redis and nothing is acknowledged that is not committed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg
import redis
import structlog

from journal import keys
from journal.append import resolve_blob
from journal.blobs import BlobStore, s3_client
from journal.chain import key_bytes
from journal.errors import BlobError, JournalError, StoreUnavailable
from journal.events import Event
from journal.redis_store import connect as redis_connect
from journal.redis_store import script_source
from journal.reducer import load_registry
from journal.settings import Settings
from projections import db, metrics
from projections.acks import Call, DeferredAcks
from projections.deferred import DeferredReplies
from projections.discovery import Discovery
from projections.intake import BODY_HEADROOM, Intake, storable_text
from projections.store import BatchResult, Item, Poison, stream_position, write_batch

log = structlog.get_logger("projections.worker")
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


def _stream_entries(reply: Any, **_: Any) -> list[tuple[str, str, dict[bytes, Any]]]:
    """XREADGROUP's reply (RESP2 list or RESP3 map) as ``(tenant, stream id, fields)``, in one pass.

    Replaces redis-py's parser on the projector's connection: that one builds a tuple and a dict per
    entry which would be unpacked again here. Entries deleted while pending (no fields) are skipped.
    """
    if not reply:
        return []
    out: list[tuple[str, str, dict[bytes, Any]]] = []
    append = out.append
    for key, msgs in reply.items() if isinstance(reply, dict) else reply:
        tenant = keys.tenant_of_stream(key.decode())
        for sid, flat in msgs:
            if flat is not None:
                pairs = iter(flat)
                append((tenant, sid.decode(), dict(zip(pairs, pairs, strict=False))))
    return out


def _entry_count(reply: Any) -> int:
    """Entries in an XREADGROUP reply, unparsed (0 for an error or nothing)."""
    if not reply or isinstance(reply, Exception):
        return 0
    return sum(len(msgs) for _, msgs in (reply.items() if isinstance(reply, dict) else reply))


def tune_gc() -> None:
    """Garbage-collector settings for a process whose main work is a projector (the CLI, the benchmark).

    A read round holds ~100,000 entries, each a few containers that live until their batch commits.
    With the default thresholds they are promoted to the oldest generation and then scanned again
    by full collections: 35 % of the worker's CPU in a 200,000-event drain (py-spy), for no cycle
    found, as the projector builds none. Objects alive now (modules, settings) are frozen out of
    every collection, and young collections run every 100,000 allocations instead of 700.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


class Projector:
    """A projector worker. ``run()`` loops until ``stop()`` or SIGTERM; ``run_once()`` does one turn."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None, *,
                 consumer: str | None = None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.key = key_bytes(settings.hash_key)
        #: The custom reducers snapshots fold with: the settings', as every replayer loads them.
        self.registry = load_registry(settings.reducers)
        self._stop = threading.Event()
        self._redis: redis.Redis | None = None
        self._acks: DeferredAcks | None = None
        self._reads: DeferredReplies | None = None
        #: The chunks of tenants of a read sent ahead (``read_and_project``), in reply order.
        self._ahead: list[list[str]] = []
        self._pg: psycopg.Connection | None = None
        self.discovery = Discovery(lambda: self.redis, GROUP, refresh_every=self.options.tenant_refresh_every,
                                   scan_every=self.options.tenant_scan_every)
        # The discovery's own sets, shared (never rebound).
        self._tenants = self.discovery.tenants
        self._grouped = self.discovery.grouped
        self.intake = Intake(settings.blob_threshold + BODY_HEADROOM, settings.max_payload_bytes + BODY_HEADROOM)
        self._scripts: dict[str, Any] = {}
        self._last_maintenance = 0.0
        self._last_claim = -float("inf")
        self._attempts: dict[tuple[str, str], int] = defaultdict(int)
        #: A committed batch whose acknowledgement waits for the next batch's row locks (``_project_batches``).
        self._committed: tuple[BatchResult, list[tuple[str, str]]] | None = None
        #: tenant -> committed stream ms (None: read it from PostgreSQL) whose Lua heads need ``repair_heads``.
        self._due_repairs: dict[str, int | None] = {}
        #: Re-read this consumer's own pending entries (at start, and after a failed batch).
        self._recover = True
        # Blobs are read only to fold snapshots, which can be skipped: fail fast rather than stall a batch.
        self.resolve = SnapshotBlobs(BlobStore(s3_client(settings, read_timeout=5, attempts=1), settings.s3_bucket)
                                     if settings.s3_url else None)
        self.log = log.bind(consumer=self.consumer)

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            if not self.settings.redis_url:
                raise StoreUnavailable("no Redis URL configured for the projector")
            self._redis = redis_connect(self.settings.redis_url)
            self._redis.set_response_callback("XREADGROUP", _stream_entries)
        return self._redis

    @property
    def reads(self) -> DeferredReplies:
        if self._reads is None:
            self._reads = DeferredReplies(self.settings.redis_url or "")
        return self._reads

    @property
    def acks(self) -> DeferredAcks:
        if self._acks is None:
            self._acks = DeferredAcks(self.settings.redis_url or "", self._script("acknowledge"))
        return self._acks

    @property
    def pg(self) -> psycopg.Connection:
        if self._pg is None or self._pg.closed:
            self._pg = db.connect(self.settings)
        return self._pg

    def _script(self, name: str) -> Any:
        """A Lua script of journal/lua, registered once per connection."""
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(script_source(name))
        return self._scripts[name]

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._acks is not None:
            with contextlib.suppress(redis.RedisError, psycopg.Error, JournalError):
                self._flush_acks()  # stopping: the last batch's acknowledgements are not left unread
            self._acks.reset()
        if self._reads is not None:
            self._reads.reset()
        if self._pg is not None:
            self._pg.close()
        if self._redis is not None:
            self._redis.close()

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
        if self._reads is not None and self._reads.unread:
            # A round read ahead is delivered to this consumer already: project it rather than leave
            # it pending until another worker claims it.
            with contextlib.suppress(StoreUnavailable, psycopg.OperationalError, redis.RedisError):
                self.read_and_project()
                self._flush_acks()
        self.close()
        self.log.info("projector_stopped")

    def _reset_connections(self) -> None:
        # Entries of a read sent ahead stay pending on this consumer: recover_own takes them next turn.
        if self._reads is not None:
            self._reads.reset()
        if self._acks is not None:
            self._acks.reset()
        if self._pg is not None:
            with contextlib.suppress(psycopg.Error):
                self._pg.close()
            self._pg = None
        self._grouped.clear()

    # -- one turn ------------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Refresh tenants, read and project one round of entries, and do due maintenance."""
        now = time.monotonic()
        if self.discovery.due(now):
            self.refresh_tenants()
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
                metrics.observe_lag(self.redis, self._tenants, GROUP)
        if self._recover:
            self._recover = False  # before: a failure while recovering asks for another turn
            self._flush_acks()  # entries whose acknowledgement is in flight are not pending work
            done += self.recover_own()
        done += self.read_and_project()
        self._flush_acks()
        return done

    def recover_own(self) -> int:
        """Project entries delivered to this consumer but never acknowledged (a failed batch)."""
        total = 0
        tenants = sorted(self._tenants)
        for i in range(0, len(tenants), self.options.streams_per_read):
            streams = {keys.stream(t): "0" for t in tenants[i : i + self.options.streams_per_read]}
            for _ in range(100):  # bounded: an entry failing below max_attempts stays pending
                try:
                    entries = self.redis.xreadgroup(GROUP, self.consumer, streams, count=self.options.batch_size)
                except redis.ResponseError as e:
                    chunk = [keys.tenant_of_stream(k) for k in streams]
                    if "NOGROUP" in str(e):
                        self.discovery.regroup(chunk)
                    elif not self.discovery.quarantine(chunk):
                        raise
                    self._recover = True  # the chunk's other tenants: next turn
                    break
                if not entries:
                    break
                done = self.project(entries)
                total += done
                if not done:
                    break
        return total

    def refresh_tenants(self) -> None:
        """New tenants from the registry, a background SCAN and, on the first turn, PostgreSQL."""
        self.discovery.refresh(trusted=self._pg_tenants)

    def _pg_tenants(self) -> set[str]:
        with self.pg.transaction():
            return {r[0] for r in self.pg.execute("SELECT tenant_id FROM journal.offsets")}

    def _ensure_groups(self, tenants: Iterable[str]) -> None:
        self.discovery.ensure_groups(tenants)

    def read_and_project(self) -> int:
        """Read new entries of every known stream (one pipelined round trip), then project them.

        A round that fills several batches means a backlog: the next round's read is then sent
        before this one is written, and its reply taken at the next turn, so Valkey prepares it
        while PostgreSQL works (``DeferredReplies``).
        """
        if self.reads.unread:
            chunks, replies = self._ahead, self.reads.replies()
        else:
            tenants = sorted(self._tenants)
            if not tenants:
                self._stop.wait(self.options.block_ms / 1000)
                return 0
            chunks = self._chunks(tenants)
            # One read can block until something arrives; many streams cannot share one blocking read.
            # Valkey writes replies once it has run every command received, so the first chunk goes alone.
            self._send_reads(chunks[:1], len(tenants), block=len(chunks) == 1)
            replies = self.reads.replies()
            if len(chunks) > 1:
                self._send_reads(chunks[1:], len(tenants), block=False)
                if _entry_count(replies[0]) >= self.options.batch_size // 2:
                    # A backlog: start on it now; the other chunks' replies are parsed while this round
                    # waits on PostgreSQL, and projected next turn.
                    chunks, self._ahead = chunks[:1], chunks[1:]
                else:
                    replies += self.reads.replies()
        entries = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, Exception):
                if "NOGROUP" in str(reply):  # Redis restarted empty or a stream was deleted: recreate groups.
                    self.discovery.regroup(chunk)
                    continue
                # One tenant can turn its stream key into another type (its user may SET it): that fails
                # the whole XREADGROUP, so set it aside rather than stop every tenant of the chunk.
                if isinstance(reply, redis.ResponseError) and self.discovery.quarantine(chunk):
                    continue
                raise reply
            entries += _stream_entries(reply)
        if not entries:
            if len(chunks) > 1:  # idle briefly, do not spin
                self._stop.wait(self.options.block_ms / 1000)
            return 0
        size = self.options.batch_size
        batches = [entries[i : i + size] for i in range(0, len(entries), size)]
        if len(batches) > 1 and not self.reads.unread and not self._stop.is_set():
            tenants = sorted(self._tenants)
            self._ahead = self._chunks(tenants)
            self._send_reads(self._ahead, len(tenants), block=False)
        return self._project_batches(batches)

    def _chunks(self, tenants: list[str]) -> list[list[str]]:
        """``tenants`` in groups of ``streams_per_read``: one XREADGROUP each."""
        spr = self.options.streams_per_read
        return [tenants[i : i + spr] for i in range(0, len(tenants), spr)]

    def _send_reads(self, chunks: list[list[str]], n_tenants: int, *, block: bool) -> None:
        """Send one XREADGROUP per chunk of tenants, ``n_tenants`` in the round; replies via ``self.reads``."""
        # Enough per stream that a thread's backlog lands in one transaction, bounded per round.
        per_stream = max(10, self.options.read_ahead // n_tenants)
        wait = ("BLOCK", self.options.block_ms) if block else ()
        self.reads.send([("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", per_stream, *wait, "STREAMS",
                          *map(keys.stream, chunk), *[">"] * len(chunk)) for chunk in chunks])

    def _project_batches(self, batches: list[list[tuple[str, str, dict[bytes, Any]]]]) -> int:
        """Project ``batches`` in order, overlapping the worker's own work with PostgreSQL's.

        While a batch's thread rows are being locked, the batch before it is acknowledged; while its
        writes and commit run, the next batch is decoded and one reply of a read sent ahead is parsed.
        """
        done = 0
        decoded = self._decode(batches[0])
        try:
            for i in range(len(batches)):
                # cache: computed once, by write_batch while it waits on PostgreSQL, or here if it failed first.
                nxt = functools.cache(functools.partial(self._decode, batches[i + 1])) if i + 1 < len(batches) else None
                done += self._write(*decoded, while_locking=self._ack_committed,
                                    meanwhile=functools.partial(self._while_writing, nxt), defer_ack=True)
                if nxt is not None:
                    decoded = nxt()
        finally:
            self._ack_committed()  # the last batch's, or one committed before a later batch failed
        self._repair()
        return done

    def _while_writing(self, decode_next: Callable[[], object] | None) -> None:
        if decode_next is not None:
            decode_next()
        self._parse_ahead()

    def _parse_ahead(self) -> None:
        """Parse one reply of the read sent ahead if it has arrived (Valkey may still be running it)."""
        self.reads.read_arrived()

    def _ack_committed(self) -> None:
        """Acknowledge the batch ``_write`` committed with ``defer_ack``, if not done yet."""
        if self._committed is not None:
            committed, self._committed = self._committed, None
            self._after_commit(*committed)

    def claim(self) -> int:
        """Take over entries pending on dead consumers for longer than ``claim_idle_ms``."""
        tenants = sorted(self._tenants)
        if not tenants:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for t in tenants:
            pipe.xautoclaim(keys.stream(t), GROUP, self.consumer, self.options.claim_idle_ms, "0-0", count=1000)
        entries = []
        for t, res in zip(tenants, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(res, Exception):
                continue
            for sid, fields in res[1]:
                if fields is not None:
                    entries.append((t, sid.decode(), fields))
        if entries:
            self.log.info("claimed_pending", entries=len(entries))
            metrics.CLAIMED.inc(len(entries))
            return self.project(entries)
        return 0

    # -- projection ----------------------------------------------------------------------------------

    def project(self, entries: list[tuple[str, str, dict[bytes, Any]]]) -> int:
        """Decode, write in one transaction, then acknowledge. Returns entries handled."""
        return self._write(*self._decode(entries))

    def _decode(self, entries: list[tuple[str, str, dict[bytes, Any]]]) -> tuple[list[Item], list[Poison]]:
        return self.intake.decode(entries)

    def _write(self, items: list[Item], poison: list[Poison], *, while_locking: Callable[[], object] | None = None,
               meanwhile: Callable[[], object] | None = None, defer_ack: bool = False) -> int:
        """Write one batch and commit; acknowledge it now, or with ``defer_ack`` at ``_ack_committed``."""
        t0 = time.perf_counter()
        try:
            result = write_batch(self.pg, items, poison, key=self.key, snapshot_every=self.settings.snapshot_every,
                                 resolve=self.resolve, while_locking=while_locking, meanwhile=meanwhile,
                                 registry=self.registry)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            self.log.warning("batch_rejected_retrying_one_by_one", error=str(e), entries=len(items) + len(poison))
            self._ack_committed()
            return self._project_singly(items, poison)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - t0)
        self._ack_committed()  # if ``while_locking`` did not run
        committed = (result, [(i.event.tenant, i.stream_id) for i in items] + [(p.tenant, p.stream_id) for p in poison])
        if defer_ack:
            self._committed = committed
        else:
            self._after_commit(*committed)
        return len(items) + len(poison)

    def _project_singly(self, items: list[Item], poison: list[Poison]) -> int:
        done: list[tuple[str, str]] = []
        total = BatchResult()
        for it in items:
            slot = (it.event.tenant, it.stream_id)
            try:
                r = write_batch(self.pg, [it], key=self.key, snapshot_every=self.settings.snapshot_every,
                                resolve=self.resolve, registry=self.registry)
                total.heads.update(r.heads)
                total.conflicts += r.conflicts
                total.inserted += r.inserted
                done.append(slot)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                self._attempts[slot] += 1
                if self._attempts[slot] >= self.options.max_attempts:
                    reason = storable_text(f"PostgreSQL refused it {self._attempts[slot]} times: {e}")
                    poison.append(Poison(it.event.tenant, it.stream_id, reason, it.body, it.event.thread,
                                         it.event.seq))
                    self._attempts.pop(slot, None)
                else:
                    self.log.warning("entry_failed", tenant=it.event.tenant, thread=it.event.thread,
                                     seq=it.event.seq, attempt=self._attempts[slot], error=str(e))
                    self._recover = True  # still pending on this consumer: retried next turn, not after claim_idle_ms
        if poison:
            total.dead_letters = self._write_dead_letters(poison)
            done += [(p.tenant, p.stream_id) for p in poison]
        self._after_commit(total, done)
        return len(done)

    def _write_dead_letters(self, poison: list[Poison]) -> int:
        """Store ``poison``; if PostgreSQL refuses a row as is, store it with only the columns that always fit."""
        try:
            return write_batch(self.pg, [], poison).dead_letters
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            self.log.error("dead_letter_refused_storing_bare", error=str(e)[:500], entries=len(poison))
            bare = [Poison(p.tenant, p.stream_id, storable_text(f"{p.reason} (stored bare: {e})"), p.entry)
                    for p in poison]
            return write_batch(self.pg, [], bare).dead_letters

    def _after_commit(self, result: BatchResult, acked: list[tuple[str, str]]) -> None:
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
            calls.append(Call(tenant, [keys.projected(tenant), keys.stream(tenant)],
                              [GROUP, keys.COMMITTED_MARK, *mark, len(sids), *sids, *heads.get(tenant, ())],
                              None if position is None else position[0]))
        stale = self.acks.send(calls)
        if result.conflicts:
            pipe = self.redis.pipeline(transaction=False)
            for tenant, thread, seq in result.conflicts:
                pipe.hset(keys.fences(tenant), thread, f"seq {seq} was issued twice with different content")
                self.log.error("sequence_conflict_thread_fenced", tenant=tenant, thread=thread, seq=seq)
            for (tenant, thread, _), res in zip(result.conflicts, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(res, redis.ResponseError):  # the tenant's user made its fences key another type
                    self.log.error("fence_refused", tenant=tenant, thread=thread, error=str(res)[:500])
        # A reused seq proves Redis lost its tail: stop further reuse (as soon as no transaction is open).
        for tenant, *_ in result.conflicts:
            self._due_repairs.setdefault(tenant, result.positions[tenant][0] if tenant in result.positions else None)
        for call in stale:
            self._due_repairs.setdefault(call.tenant, call.committed_ms)
        if self.pg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:  # not inside the next batch
            self._repair()
        metrics.PROJECTED.inc(result.inserted)
        metrics.DUPLICATES.inc(result.duplicates)
        metrics.CONFLICTS.inc(len(result.conflicts))
        metrics.DEAD_LETTERS.inc(result.dead_letters)

    def _flush_acks(self) -> None:
        """Wait for the acknowledgements in flight (end of a turn, before re-reading pending entries, at close)."""
        for call in self.acks.flush():
            self._due_repairs.setdefault(call.tenant, call.committed_ms)
        self._repair()

    def _repair(self) -> None:
        """A stale committed mark, like a reused seq, proves Redis lost its tail: raise the heads now."""
        for tenant in sorted(self._due_repairs):
            self.repair_heads(tenant, self._due_repairs[tenant])
            del self._due_repairs[tenant]  # only once done: a failed repair is retried at the next call

    # -- maintenance ---------------------------------------------------------------------------------

    def trim(self) -> None:
        """XTRIM MINID below the oldest entry not yet committed, keeping ``hot_window`` entries."""
        tenants = sorted(self._tenants)
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xlen(keys.stream(tenant))
        lengths = pipe.execute(raise_on_error=False)
        for tenant, length in zip(tenants, lengths, strict=True):
            if isinstance(length, Exception) or int(length) <= self.settings.hot_window:
                continue  # nothing to trim: skip the per-stream round trips
            with contextlib.suppress(redis.ResponseError):  # a tenant's key changed under us: its tenant only
                self._trim_one(tenant)

    def _trim_one(self, tenant: str) -> None:
        """Trim one stream, if it holds more than the hot window below what is committed."""
        stream = keys.stream(tenant)
        groups = self.redis.xinfo_groups(stream)
        summary = self.redis.xpending(stream, GROUP)
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        if group is None:
            return
        delivered = group["last-delivered-id"]
        safe = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
        if summary and summary.get("pending"):
            low = summary["min"]
            low = low.decode() if isinstance(low, bytes) else str(low)
            safe = min(safe, low, key=stream_position)
        elif safe == "0-0":
            return
        # Keep the hot window: the oldest id to keep is hot_window entries before `safe`.
        window = self.redis.xrevrange(stream, max=safe, min="-", count=self.settings.hot_window + 1)
        if len(window) <= self.settings.hot_window:
            return
        keep_from = window[-2][0] if len(window) >= 2 else window[-1][0]
        self.redis.xtrim(stream, minid=keep_from.decode(), approximate=False)

    def check_tail(self) -> None:
        """Detect that Redis lost its tail, and repair the heads of the tenants concerned.

        After each commit the worker raises ``projected[COMMITTED_MARK]`` to the committed stream
        time. A server restored from an older AOF/RDB, or a fresh one, has an older mark (or none)
        than ``journal.offsets`` in PostgreSQL, even after new appends. Offsets younger than
        ``tail_check_grace_ms`` are skipped: their mark may still be on its way from another worker.
        """
        with self.pg.transaction():
            committed = {t: ms for t, ms in self.pg.execute(
                "SELECT tenant_id, stream_ms FROM journal.offsets WHERE updated_at <= now() - %s * interval '1 ms'",
                (self.options.tail_check_grace_ms,))}
        if not committed:
            return
        tenants = sorted(committed)
        pipe = self.redis.pipeline(transaction=False)
        for t in tenants:
            pipe.hget(keys.projected(t), keys.COMMITTED_MARK)
        for t, mark in zip(tenants, pipe.execute(raise_on_error=False), strict=True):
            try:
                behind = int(mark or 0) < committed[t]
            except (TypeError, ValueError):  # not a number: the tenant's user wrote it (its own key)
                behind = True
            if behind:
                self.repair_heads(t, committed[t])
        self.discovery.add_trusted(tenants)

    def repair_heads(self, tenant: str, committed_ms: int | None = None) -> int:
        """Raise the tenant's Lua heads to at least what PostgreSQL holds, and restore its fences."""
        with self.pg.transaction():
            rows = self.pg.execute("SELECT thread_id, GREATEST(last_seq, max_seq), fenced, fence_reason "
                                   "FROM journal.threads WHERE tenant_id = %s", (tenant,)).fetchall()
            if committed_ms is None:
                found = self.pg.execute("SELECT stream_ms FROM journal.offsets WHERE tenant_id = %s",
                                        (tenant,)).fetchone()
                committed_ms = found[0] if found else 0
        raised = 0
        script = self._script("raise_heads")
        try:
            for i in range(0, len(rows), 500):
                args: list[Any] = []
                for thread, seq, _, _ in rows[i : i + 500]:
                    args += [thread, seq]
                raised += int(script(keys=[keys.heads(tenant)], args=args))
            fenced = {thread: reason or "fenced in PostgreSQL" for thread, _, is_fenced, reason in rows if is_fenced}
            if fenced:
                self.redis.hset(keys.fences(tenant), mapping=fenced)
            script(keys=[keys.projected(tenant)], args=[keys.COMMITTED_MARK, committed_ms])
        except redis.ResponseError as e:
            # The tenant's user can write non-numbers into its own heads or marks, on which the script fails:
            # its own appends then fail too; other tenants' repairs go on.
            self.log.error("head_repair_refused", tenant=tenant, error=str(e)[:500])
            return 0
        # Raised heads mean Redis really had lost its tail; none raised was a harmless false alarm
        # (a mark overtaken by another worker's commit).
        (self.log.error if raised else self.log.info)(
            "redis_lost_tail_heads_restored", tenant=tenant, threads=len(rows), raised=raised, fenced=len(fenced))
        metrics.TAIL_REPAIRS.inc()
        return raised

    def drain(self, timeout: float = 30.0, tenants: Iterable[str] | None = None) -> None:
        """Project until ``tenants`` (default: all known) have nothing new or pending (tests, the demo)."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh_tenants()
            self.run_once()
            left = self.backlog(tenants)
            if left == 0:
                return
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"projector did not drain within {timeout}s ({left} entries left)")

    def backlog(self, tenants: Iterable[str] | None = None) -> int:
        """Entries not yet acknowledged (undelivered lag + pending) over ``tenants`` (default: all known)."""
        total = 0
        for t in self._tenants if tenants is None else tenants:
            try:
                for g in self.redis.xinfo_groups(keys.stream(t)):
                    if _text(g["name"]) == GROUP:
                        total += int(g.get("lag") or 0) + int(g.get("pending") or 0)
            except redis.ResponseError:
                continue
        return total


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
